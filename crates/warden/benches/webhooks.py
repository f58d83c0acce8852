#!/usr/bin/env python3
"""Webhook benchmark: events of N sessions through the whole daemon to one receiver, against
warden-fakewa in its own process; the daemon's events come from real session lifecycles.

    cargo build --release -p warden -p warden-fakewa
    python3 crates/warden/benches/webhooks.py 1000        # N sessions, default 1000

The receiver is an asyncio HTTP/1.1 server on loopback (keep-alive, answers 204), recording
when each event arrives; stopped, it closes its open connections too. Two runs:
  live     N sessions created, started (paired by the fake server, QR codes and all), and
           stopped, with the receiver up: every event's time from its journal timestamp to
           its arrival (p50, p99, max), and events per second over the run; meanwhile one
           session's `history` is read again and again (each read's time: p50, p99, max)
  backlog  the receiver down while every session is started and stopped again; then it comes
           back: the events waiting are drained, and the drain rate is events per second from
           the first arrival to the last
"""

import asyncio
import json
import os
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


class Receiver(asyncio.Protocol):
    """One connection: HTTP/1.1 requests, kept alive, each answered 204 as soon as its body is
    in; the event's id, its journal time and its arrival are recorded."""

    open = set()

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
        Receiver.open.add(transport)

    def connection_lost(self, exc):
        Receiver.open.discard(self.transport)

    def data_received(self, data):
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length, hook_id = 0, None
            for line in self.buf[:end].decode("latin-1").split("\r\n")[1:]:
                key, _, value = line.partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "webhook-id":
                    hook_id = value.strip()
            if len(self.buf) < end + 4 + length:
                return
            body, self.buf = self.buf[end + 4:end + 4 + length], self.buf[end + 4 + length:]
            now = time.time()
            at = datetime.fromisoformat(json.loads(body)["timestamp"].replace("Z", "+00:00")).timestamp()
            RECEIVED.add((now, at, hook_id))
            self.transport.write(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n")


class Server:
    """The receiver on its own thread's event loop; `shutdown` closes the listener and every
    open connection, so the daemon sees it down."""

    def __init__(self, port):
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run():
            asyncio.set_event_loop(self.loop)
            self.server = self.loop.run_until_complete(
                self.loop.create_server(Receiver, "127.0.0.1", port, reuse_address=True, backlog=1024))
            ready.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait()

    def shutdown(self):
        def stop():
            self.server.close()
            for transport in list(Receiver.open):
                transport.abort()
            # After the aborts' own callbacks, which close the sockets.
            self.loop.call_soon(self.loop.stop)

        self.loop.call_soon_threadsafe(stop)
        self.thread.join()

    def server_close(self):
        pass


def serve(port):
    return Server(port)


class HistoryReads:
    """`history` of one session asked again and again on its own connection, each answer's
    time recorded, until stopped: how reads fare while the storm's writes are committed."""

    def __init__(self, path, token):
        self.took, self.done = [], threading.Event()
        control = Control(path)

        def run():
            while not self.done.is_set():
                t = time.perf_counter()
                assert control.one({"op": "history", "token": token, "limit": 10}).get("ok")
                self.took.append((time.perf_counter() - t) * 1000)
                time.sleep(0.01)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join()


def quiet(limit=600, still=3.0):
    """Waits for the first event, then until no event arrived for `still` seconds."""
    start = time.time()
    while RECEIVED.count() == 0:
        if time.time() - start > limit:
            raise SystemExit("no event came")
        time.sleep(0.05)
    print(f"first event {time.time() - start:.2f} s after the receiver came back")
    last, seen = time.time(), RECEIVED.count()
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
        reads = HistoryReads(os.path.join(work, "warden.sock"), tokens[0])
        every(c, "start", tokens)
        wait_connected(c, n)
        every(c, "stop", tokens)
        wait_none_connected(c)
        reads.stop()
        quiet()
        live = RECEIVED.take()
        ids = {i for _, _, i in live}
        lat = [(arrival - at) * 1000 for arrival, at, _ in live]
        span = max(a for a, _, _ in live) - t0
        print(f"history reads during the storm: {len(reads.took)}, p50 {percentile(reads.took, 50):.1f} ms, "
              f"p99 {percentile(reads.took, 99):.1f} ms, max {max(reads.took):.1f} ms")
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
