#!/usr/bin/env python3
"""Whole-daemon benchmark of slow HTTP clients (slowloris): N connections trickle their
request headers, one byte a second, while a client measures the status route.

    cargo build --release -p warden
    ulimit -n 20000
    python3 crates/warden/benches/slowloris.py 1000        # N, default 1000

Printed:
  quiet      the status route's latency (p50, p99, max) with no slow client
  attack     the same while the N slow clients trickle (all of them connected first)
  cut        how many slow clients the daemon closed, and when (the [http]
             header_read_timeout, 10 s by default)
The daemon runs with [http] max_connections = N + 64, so the cap is not what protects it here:
the header-read timeout and the async server are.
"""

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BIN = os.environ.get("WARDEN_BIN") or os.path.join(ROOT, "target", "release")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_daemon(work, n, port):
    with open(os.path.join(work, "daemon.toml"), "w") as f:
        f.write(f"""
[daemon]
sessions_dir = "sessions"
socket = "warden.sock"
log_dir = "logs"
log_level = "warn"

[http]
bind = "127.0.0.1:{port}"
max_connections = {n + 64}

[whatsapp]
url = "ws://127.0.0.1:9/ws/chat"
version = "2.3000.1027868167"
""")
    log = open(os.path.join(work, "daemon.log"), "ab")
    proc = subprocess.Popen([os.path.join(BIN, "warden"), "serve", "--config",
                             os.path.join(work, "daemon.toml")],
                            cwd=work, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                body = b'{"token":"s1"}'
                s.sendall(b"POST /session HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                          + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                          + body)
                if b" 200 " in s.recv(200):
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the daemon did not become ready")


async def measure(port, count):
    """`count` status requests on one keep-alive connection; latencies in ms."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /session/status/s1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    times = []
    for _ in range(count):
        started = time.perf_counter()
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0]
                     .split(b":")[1])
        await reader.readexactly(length)
        times.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)
    writer.close()
    return times


def summary(times):
    times = sorted(times)
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return f"p50 {pick(0.5):.2f} ms  p99 {pick(0.99):.2f} ms  max {times[-1]:.2f} ms  ({len(times)} requests)"


async def slow_client(port, started, cuts):
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        cuts.append(None)
        return
    writer.write(b"GET /session/status/s1 HTTP/1.1\r\nX-Slow: ")
    try:
        while True:
            await writer.drain()
            try:
                # Any answer to an unfinished request (a 408, or the close) means it was cut.
                await asyncio.wait_for(reader.read(256), 1.0)
                cuts.append(time.time() - started)
                return
            except asyncio.TimeoutError:
                writer.write(b"a")
    except (ConnectionError, OSError):
        cuts.append(time.time() - started)


async def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        proc = start_daemon(work, n, port)
        try:
            quiet = await measure(port, 500)
            print(f"quiet      {summary(quiet)}", flush=True)
            cuts = []
            started = time.time()
            slow = [asyncio.create_task(slow_client(port, started, cuts)) for _ in range(n)]
            await asyncio.sleep(1.0)
            attack = await measure(port, 500)
            print(f"attack     {summary(attack)} with {n} slow clients", flush=True)
            await asyncio.wait_for(asyncio.gather(*slow), 120)
            refused = sum(1 for c in cuts if c is None)
            times = sorted(c for c in cuts if c is not None)
            print(f"cut        {len(times)} of {n} slow clients closed by the daemon, "
                  f"first at {times[0]:.1f} s, last at {times[-1]:.1f} s"
                  + (f"; {refused} could not connect" if refused else ""), flush=True)
        finally:
            proc.send_signal(subprocess.signal.SIGTERM)
            proc.wait(timeout=30)


asyncio.run(main())
