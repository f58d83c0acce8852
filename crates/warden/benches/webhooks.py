#!/usr/bin/env python3
"""Webhook benchmark: events of N sessions through the whole daemon to one receiver, against
warden-fakewa in its own process; the daemon's events come from real session lifecycles.

    cargo build --release -p warden -p warden-fakewa
    python3 crates/warden/benches/webhooks.py 1000        # N sessions, default 1000

The receiver is Python's threaded HTTP server on loopback (one thread per connection, answers
204), recording when each event arrives. Two runs:
  live     N sessions created, started (paired by the fake server, QR codes and all), and
           stopped, with the receiver up: every event's time from its journal timestamp to
           its arrival (p50, p99, max), and events per second over the run
  backlog  the receiver down while every session is started and stopped again; then it comes
           back: the events waiting are drained, and the drain rate is events per second from
           the first arrival to the last
"""

import http.server
import json
import os
import socketserver
import sys
import threading
import time
from datetime import datetime

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_scale import BIN, VERSION, Control, write_config, free_port, start_daemon, wait_connected, wait_none_connected, every  # noqa: E402

import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Received:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []  # (arrival, event time, id)

    def add(self, item):
        with self.lock:
            self.items.append(item)

    def count(self):
        with self.lock:
            return len(self.items)

    def take(self):
        with self.lock:
            items, self.items = self.items, []
            return items


RECEIVED = Received()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        now = time.time()
        event = json.loads(body)
        at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
        RECEIVED.add((now, at, self.headers.get("webhook-id")))
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024


def serve(port):
    server = Server(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def quiet(limit=600, still=3.0):
    """Waits until no event arrived for `still` seconds."""
    last, seen, start = time.time(), RECEIVED.count(), time.time()
    while time.time() - start < limit:
        time.sleep(0.2)
        n = RECEIVED.count()
        if n != seen:
            seen, last = n, time.time()
        elif time.time() - last >= still:
            return
    raise SystemExit("events kept coming")


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p / 100))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    wa_port, hook_port = free_port(), free_port()
    fake = subprocess.Popen([os.path.join(BIN, "warden-fakewa"), "--listen", f"127.0.0.1:{wa_port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="warden-webhooks-")
    write_config(work, wa_port, f"""
[[webhooks]]
url = "http://127.0.0.1:{hook_port}/hooks"
secret = "{SECRET}"
events = ["*"]
allow_private = true
name = "bench"
backoff_base = "100ms"
backoff_cap = "1s"
max_attempts = 100
""")
    server = serve(hook_port)
    proc = None
    try:
        proc, c = start_daemon(work, dict(os.environ))
        tokens = [f"s{i}" for i in range(n)]
        t0 = time.time()
        for chunk in range(0, n, 500):
            answers = c.many([{"op": "create", "token": t} for t in tokens[chunk:chunk + 500]])
            assert all(a.get("ok") for a in answers), answers[:3]
        every(c, "start", tokens)
        wait_connected(c, n)
        every(c, "stop", tokens)
        wait_none_connected(c)
        quiet()
        live = RECEIVED.take()
        ids = {i for _, _, i in live}
        lat = [(arrival - at) * 1000 for arrival, at, _ in live]
        span = max(a for a, _, _ in live) - t0
        print(f"live: {len(live)} events ({len(ids)} distinct ids) from {n} sessions in {span:.2f} s: "
              f"{len(live) / span:.0f} events/s; event to delivery p50 {percentile(lat, 50):.1f} ms, "
              f"p99 {percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms")

        server.shutdown()
        server.server_close()
        every(c, "start", tokens)
        wait_connected(c, n)
        every(c, "stop", tokens)
        wait_none_connected(c)
        pending = c.one({"op": "webhooks"})["result"]["webhooks"][0]
        server = serve(hook_port)
        quiet()
        backlog = RECEIVED.take()
        first = min(a for a, _, _ in backlog)
        last = max(a for a, _, _ in backlog)
        print(f"backlog: {len(backlog)} events waiting (read ahead {pending['queued']}), drained in "
              f"{last - first:.2f} s: {len(backlog) / max(last - first, 1e-6):.0f} events/s")
        print(f"| {n} | {len(live)} | {len(live) / span:.0f} | {percentile(lat, 50):.1f} ms | "
              f"{percentile(lat, 99):.1f} ms | {len(backlog)} | {len(backlog) / max(last - first, 1e-6):.0f} |")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc and proc.poll() is None:
            proc.kill()
        fake.terminate()
        server.shutdown()


if __name__ == "__main__":
    main()
