#!/usr/bin/env python3
"""Heap profile of connected idle sessions in the whole daemon, with heaptrack.

    cargo build --release -p warden -p warden-fakewa
    python3 crates/warden/benches/heap_profile.py 200        # N, default 200

Pairs N sessions through the control socket against warden-fakewa in its own process (as
daemon_scale.py does), stops the daemon, restarts it under heaptrack, waits until all N are
connected again from stored credentials, lets them idle 8 s, and kills the daemon with SIGKILL:
what heaptrack reports as "leaked" is then what was live, connected and idle. The same is done
with no session (the baseline). Prints the heap live per session, and the allocation sites
grouped by the crate that asked for the memory, per session.

Needs heaptrack and heaptrack_print (Debian: `apt-get install heaptrack`). Set WARDEN_BIN to
profile binaries other than target/release.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemon_scale as ds  # noqa: E402

# The first frame (from the allocation upward) whose function names one of these decides
# the group. Order matters: more specific first.
GROUPS = [
    ("gimli", "backtraces symbolized for logged errors (RUST_BACKTRACE)"),
    ("backtrace_rs", "backtraces symbolized for logged errors (RUST_BACKTRACE)"),
    ("tracing_appender", "log writer (fixed)"),
    ("moka", "moka (wa-rs's caches)"),
    ("sqlite3", "SQLite (shared page cache)"),
    ("rusqlite", "SQLite (shared page cache)"),
    ("warden_store", "warden-store"),
    ("tokio_websockets", "WebSocket transport"),
    ("warden_whatsapp::transport", "WebSocket transport"),
    ("wa_rs_noise", "Noise socket"),
    ("wa_rs::socket", "Noise socket"),
    ("wa_rs_libsignal", "Signal (keys, sessions)"),
    ("wa_rs::store", "wa-rs device copies"),
    ("PersistenceManager", "wa-rs device copies"),
    ("wa_rs_core::store", "wa-rs device copies"),
    ("dashmap", "DashMaps"),
    ("wa_rs::client::Client::new", "wa-rs Client (other fields)"),
    ("wa_rs::", "wa-rs (other)"),
    ("wa_rs_core", "wa-rs (other)"),
    ("wa_rs_binary", "wa-rs (other)"),
    ("warden_whatsapp", "warden-whatsapp"),
    ("warden_core", "warden-core (supervisor)"),
    ("ractor", "warden-core (supervisor)"),
    ("tokio_rustls", "WebSocket transport"),
]
# Frames of the runtime: the memory is charged to whoever called into it.
RUNTIME = "tokio"


def find_daemon(work):
    """The pid of the warden process started for `work` (heaptrack's child)."""
    want = os.path.join(work, "daemon.toml")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"warden") and want.encode() in argv:
            return int(pid)
    return None


def profile(work, n, out):
    """Runs the daemon under heaptrack until all n are connected, then SIGKILLs it."""
    log = open(os.path.join(work, "heaptrack.log"), "ab")
    tracker = subprocess.Popen(
        ["heaptrack", "-o", out, os.path.join(ds.BIN, "warden"), "serve", "--config",
         os.path.join(work, "daemon.toml")],
        cwd=work, stdout=log, stderr=subprocess.STDOUT)
    sock = os.path.join(work, "warden.sock")
    deadline = time.time() + 120
    c = None
    while time.time() < deadline and c is None:
        try:
            c = ds.Control(sock)
            if not c.one({"op": "health"}).get("ok"):
                c = None
        except OSError:
            c = None
            time.sleep(0.1)
    if c is None:
        raise SystemExit("the daemon did not become ready under heaptrack")
    if n:
        ds.wait_connected(c, n, limit=600)
    time.sleep(8)
    pid = find_daemon(work)
    os.kill(pid, signal.SIGKILL)
    tracker.wait(timeout=600)
    files = [f for f in os.listdir(os.path.dirname(out))
             if f.startswith(os.path.basename(out) + ".") and not f.endswith(".log")]
    return os.path.join(os.path.dirname(out), sorted(files)[-1])


def leaked(data):
    """(total bytes live, {group: bytes}) from heaptrack_print's leak report."""
    text = subprocess.run(
        ["heaptrack_print", "-f", data, "--print-leaks", "1", "--print-peaks", "0",
         "--print-allocators", "0", "--print-temporary", "0",
         "-n", "100000", "--merge-backtraces", "0"],
        capture_output=True, text=True, check=True).stdout
    total = 0
    m = re.search(r"total memory leaked: ([\d.]+)([KMGT]?)", text)
    if m:
        total = to_bytes(m.group(1), m.group(2))
    groups = defaultdict(int)
    section = text.split("MEMORY LEAKS", 1)[-1]
    for block in re.split(r"\n(?=[\d.]+[KMGT]?B? leaked over)", section):
        head = re.match(r"([\d.]+)([KMGT]?)B? leaked over", block.strip())
        if not head:
            continue
        size = to_bytes(head.group(1), head.group(2))
        groups[group_of(block)] += size
    return total, groups


def to_bytes(num, unit):
    return float(num) * {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}[unit]


def mangled(path):
    """`a::b` as it appears in a v0-mangled symbol: `1a1b`."""
    return "".join(f"{len(seg)}{seg}" for seg in path.split("::"))


def group_of(block):
    """The group of the innermost frame (from the allocation upward) that names one; memory
    allocated inside tokio (tasks, channels, timers) is charged to its caller, marked so."""
    via_runtime = False
    for line in block.splitlines()[1:]:
        for needle, name in GROUPS:
            if needle in line or mangled(needle) in line:
                return name + (": tokio tasks and channels" if via_runtime else "")
        if RUNTIME in line:
            via_runtime = True
    return "tokio, caller not resolved" if via_runtime else "other (std, allocator)"


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    port = ds.free_port()
    fake = subprocess.Popen([os.path.join(ds.BIN, "warden-fakewa"), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = {}
    try:
        for sessions in (0, n):
            work = tempfile.mkdtemp(prefix="warden-heap-")
            ds.write_config(work, port)
            if sessions:
                proc, c = ds.start_daemon(work, dict(os.environ))
                tokens = [f"s{i}" for i in range(sessions)]
                ds.every(c, "create", tokens)
                ds.every(c, "start", tokens)
                ds.wait_connected(c, sessions)
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=120)
            data = profile(work, sessions, os.path.join(work, "heap"))
            runs[sessions] = leaked(data)
            print(f"{sessions} sessions: {runs[sessions][0] / 1e6:.1f} MB live ({data})")
    finally:
        fake.terminate()
    (base, base_groups), (full, full_groups) = runs[0], runs[n]
    print(f"\nheap live per connected idle session: {(full - base) / n / 1e3:.1f} kB "
          f"(N = {n}, baseline subtracted)\n")
    print("| where | kB per session |")
    print("|---|---|")
    rows = sorted(((full_groups[g] - base_groups.get(g, 0)) / n, g) for g in full_groups)
    for per, g in reversed(rows):
        if abs(per) >= 50:
            print(f"| {g} | {per / 1e3:.1f} |")


if __name__ == "__main__":
    main()
