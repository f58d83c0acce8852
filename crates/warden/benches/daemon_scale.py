#!/usr/bin/env python3
"""Whole-daemon benchmark: N sessions through the control socket, against warden-fakewa in its
own process, measured from outside (RSS, OS threads, fds, idle CPU of the daemon's process).

    cargo build --release -p warden -p warden-fakewa
    python3 crates/warden/benches/daemon_scale.py 1000        # N, default 1000

Phases, each printed as one line:
  base       the daemon with no session, 8 s after it is ready
  paired     N sessions created and started through the socket, each paired by the fake server
  restored   the daemon restarted on the same sessions/: time until all N are connected again
             (from stored credentials, no QR), then RSS/threads/fds 8 s later, and idle CPU
             over the next 10 s
  stopped    every session stopped through the socket, 8 s later
  cycle      every session started again (logged in), stopped again, 8 s later: the growth
             over the cycle per session is what a stopped session really keeps (the allocator
             keeps the pages the first stop freed, so "stopped" alone overstates it)
Per-session figures are (phase - base) / N. Admission is wide open, HTTP off.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
# WARDEN_BIN: another build's binaries (e.g. an older commit's), to compare.
BIN = os.environ.get("WARDEN_BIN") or os.path.join(ROOT, "target", "release")
VERSION = "2.3000.1027868167"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_stats(pid):
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])  # kB
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, threads, fds


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


class Control:
    """One socket connection; requests are pipelined, answers matched by id."""

    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        self.next_id = 0

    def many(self, requests):
        ids = []
        for req in requests:
            self.next_id += 1
            req = dict(req, id=self.next_id)
            ids.append(self.next_id)
            self.file.write((json.dumps(req) + "\n").encode())
        self.file.flush()
        answers = {}
        while len(answers) < len(ids):
            line = json.loads(self.file.readline())
            answers[line.get("id")] = line
        return [answers[i] for i in ids]

    def one(self, req):
        return self.many([req])[0]


def start_daemon(work, env):
    log = open(os.path.join(work, "daemon.log"), "ab")
    proc = subprocess.Popen(
        [os.path.join(BIN, "warden"), "serve", "--config", os.path.join(work, "daemon.toml")],
        cwd=work, stdout=log, stderr=subprocess.STDOUT, env=env)
    sock = os.path.join(work, "warden.sock")
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            c = Control(sock)
            if c.one({"op": "health"}).get("ok"):
                return proc, c
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("the daemon did not become ready")


def wait_connected(c, n, limit=300):
    start = time.time()
    while time.time() - start < limit:
        counts = c.one({"op": "health"})["result"].get("counts", {})
        if counts.get("connected", 0) >= n:
            return time.time() - start
        time.sleep(0.05)
    raise SystemExit(f"only {counts} after {limit} s")


def wait_none_connected(c, limit=300):
    start = time.time()
    while time.time() - start < limit:
        counts = c.one({"op": "health"})["result"].get("counts", {})
        if counts.get("connected", 0) == 0 and counts.get("connecting", 0) == 0:
            return time.time() - start
        time.sleep(0.05)
    raise SystemExit(f"still {counts} after {limit} s")


def every(c, op, tokens):
    for chunk in range(0, len(tokens), 500):
        answers = c.many([{"op": op, "token": t} for t in tokens[chunk:chunk + 500]])
        assert all(a.get("ok") for a in answers), [a for a in answers if not a.get("ok")][:3]


def settle_and_measure(pid):
    time.sleep(8)
    return proc_stats(pid)


def write_config(work, port, extra=""):
    """The daemon's config in `work`: HTTP off, admission wide open, version pinned; then
    `extra` (more tables)."""
    with open(os.path.join(work, "daemon.toml"), "w") as f:
        f.write(f"""
[daemon]
sessions_dir = "sessions"
socket = "warden.sock"
log_dir = "logs"
log_level = "warn"

[admission]
max_in_flight = 100000
per_second = 100000.0
burst = 100000

[http]
enabled = false

[whatsapp]
url = "ws://127.0.0.1:{port}/ws/chat"
version = "{VERSION}"
""" + extra)


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    port = free_port()
    fake = subprocess.Popen([os.path.join(BIN, "warden-fakewa"), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="warden-bench-")
    write_config(work, port)
    env = dict(os.environ)
    try:
        proc, c = start_daemon(work, env)
        base = settle_and_measure(proc.pid)
        print(f"base: RSS {base[0]} kB, {base[1]} threads, {base[2]} fds")

        tokens = [f"s{i}" for i in range(n)]
        t0 = time.time()
        for chunk in range(0, n, 500):
            answers = c.many([{"op": "create", "token": t} for t in tokens[chunk:chunk + 500]])
            assert all(a.get("ok") for a in answers), answers[:3]
        created = time.time() - t0
        t0 = time.time()
        for chunk in range(0, n, 500):
            answers = c.many([{"op": "start", "token": t} for t in tokens[chunk:chunk + 500]])
            assert all(a.get("ok") for a in answers), [a for a in answers if not a.get("ok")][:3]
        took = wait_connected(c, n) + (time.time() - t0 - 0)
        paired = settle_and_measure(proc.pid)
        print(f"paired: {n} created in {created:.2f} s, all connected {took:.2f} s after the first start; "
              f"RSS {paired[0]} kB, {paired[1]} threads, {paired[2]} fds")

        proc.send_signal(signal.SIGTERM)
        stopped = time.time()
        proc.wait(timeout=120)
        print(f"stop: SIGTERM to exit {time.time() - stopped:.2f} s, exit code {proc.returncode}")

        proc, c = start_daemon(work, env)
        back = wait_connected(c, n)
        restored = settle_and_measure(proc.pid)
        ticks0, w0 = cpu_ticks(proc.pid), time.time()
        time.sleep(10)
        cpu = (cpu_ticks(proc.pid) - ticks0) / os.sysconf("SC_CLK_TCK") / (time.time() - w0)
        print(f"restored: all {n} connected {back:.2f} s after ready; RSS {restored[0]} kB, "
              f"{restored[1]} threads, {restored[2]} fds; idle CPU {cpu * 100:.2f} % of one core")
        per = lambda i: (restored[i] - base[i]) / n
        print(f"| {n} | restored, connected idle | {per(0):.1f} kB | {restored[1]} total | "
              f"{per(2):.2f} | {back:.2f} s | {cpu * 100:.2f} % |")

        every(c, "stop", tokens)
        wait_none_connected(c)
        stopped = settle_and_measure(proc.pid)
        print(f"stopped: RSS {stopped[0]} kB, {stopped[1]} threads, {stopped[2]} fds "
              f"(base {base[2]} fds)")
        every(c, "start", tokens)
        wait_connected(c, n)
        every(c, "stop", tokens)
        wait_none_connected(c)
        cycled = settle_and_measure(proc.pid)
        print(f"cycle: RSS {cycled[0]} kB, {cycled[1]} threads, {cycled[2]} fds; "
              f"growth over the cycle {(cycled[0] - stopped[0]) * 1024 / n:.0f} bytes per session")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        fake.terminate()


if __name__ == "__main__":
    main()
