#!/usr/bin/env python3
"""Cluster failover benchmark: 3 `warden-cluster-node` processes over one real PostgreSQL, with
S sessions (default 300) and the default lease timings (T 15 s, D 10 s, R 2 s, P 1 s).

    cargo build --release -p warden-cluster
    python3 crates/warden-cluster/benches/failover.py          # 20 kills, 300 sessions
    python3 crates/warden-cluster/benches/failover.py 20 300 5  # kills, sessions, SIGTERMs
    python3 -u ...                                            # lines as they come

Each round kills a random node that owns sessions with SIGKILL, times how long until every
one of its sessions is claimed by the survivors, then starts it again (it gets its share back
through gentle rebalancing, at most 1 session/s per node; the next round starts once it holds
70 % of its share, or once nothing has moved for 10 s: rebalancing stops within 10 % of the
mean). Then a few rounds of SIGTERM time
the graceful hand-over. Throughout,
every claim is checked against the nodes' own lines: a claim of a session that a live,
unfenced node holds, and does not let go of within 2 s (lines of different processes are read
by different threads, so a claim can be read a few milliseconds before the release that
preceded it), is a double ownership (must be 0).

This measures ownership only, without WhatsApp: a daemon adds its reconnection (about 1 s per
session through admission control) on top. PostgreSQL runs from Debian's binaries in a temp
folder, as the `postgres` user when run as root.
"""

import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import queue
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SUSPECT_FOR = 2.0  # seconds
BIN = os.path.join(os.environ.get("WARDEN_BIN") or os.path.join(ROOT, "target", "release"),
                   "warden-cluster-node")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres(folder):
    bindir = sorted(
        (os.path.join("/usr/lib/postgresql", v, "bin") for v in os.listdir("/usr/lib/postgresql")),
        key=lambda p: int(p.split("/")[-2]))[-1]
    as_user = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"] \
        if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = os.path.join(folder, "data")
    subprocess.run(as_user + [os.path.join(bindir, "initdb"), "-D", data, "-U", "warden", "-A",
                              "trust", "-N"], check=True, stdout=subprocess.DEVNULL)
    port = free_port()
    proc = subprocess.Popen(
        as_user + [os.path.join(bindir, "postgres"), "-D", data, "-p", str(port), "-c",
                   "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}"],
        stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "ready to accept connections" in line:
            break
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    return proc, f"host=127.0.0.1 port={port} user=warden dbname=postgres"


class Cluster:
    def __init__(self, url):
        self.url = url
        self.lines = queue.Queue()
        self.procs = {}
        self.owner = {}          # token -> node, as the lines say
        self.fenced = set()      # nodes fenced or killed (their claims are void)
        self.doubles = 0
        self.suspects = {}       # token -> (holder, when): a claim read before its release?

    def start(self, name, sessions=0):
        proc = subprocess.Popen([BIN, "--database-url", self.url, "--node", name, "--sessions",
                                 str(sessions), "--rebalance"], stdout=subprocess.PIPE, text=True)
        self.procs[name] = proc
        self.fenced.discard(name)

        def read():
            for line in proc.stdout:
                self.lines.put((time.monotonic(), name, line.split()))
        threading.Thread(target=read, daemon=True).start()

    def apply(self, name, words, at):
        # Lines of different processes arrive through different reader threads, so a claim
        # can be read a few milliseconds before the release that preceded it: a claim of a
        # session that another live node holds is a double only if that node has not let go
        # of it within SUSPECT_FOR.
        for token, (holder, since) in list(self.suspects.items()):
            if at - since > SUSPECT_FOR:
                self.doubles += 1
                print(f"DOUBLE: {token} claimed while {holder} held it")
                del self.suspects[token]
        if words[0] == "claimed":
            holder = self.owner.get(words[1])
            if holder is not None and holder != name and holder not in self.fenced:
                self.suspects[words[1]] = (holder, at)
            self.owner[words[1]] = name
        elif words[0] in ("lost", "rebalance"):
            # `rebalance` is printed before the node releases the session
            if self.owner.get(words[1]) == name:
                del self.owner[words[1]]
            if self.suspects.get(words[1], (None,))[0] == name:
                del self.suspects[words[1]]
        elif words[0] == "left":
            # A graceful leave: every socket closed, every session released.
            for token in [t for t, n in self.owner.items() if n == name]:
                del self.owner[token]
            for token in [t for t, (h, _) in self.suspects.items() if h == name]:
                del self.suspects[token]
        elif words[0] == "fenced":
            self.fenced.add(name)
            for token, (holder, _) in list(self.suspects.items()):
                if holder == name:
                    # Fenced before letting go: a double ownership for the time in between.
                    self.doubles += 1
                    print(f"DOUBLE: {token} claimed while {holder} held it (until it fenced)")
                    del self.suspects[token]

    def until(self, done, within=120):
        deadline = time.monotonic() + within
        while not done():
            at, name, words = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            self.apply(name, words, at)
            self.last = at

    def settle(self, name, share, quiet=10):
        """Reads lines until `name` holds `share` sessions, or nothing has changed for `quiet`
        seconds (rebalancing stops within 10 % of the mean)."""
        while len(self.held_by(name)) < share:
            try:
                at, who, words = self.lines.get(timeout=quiet)
            except queue.Empty:
                return
            self.apply(who, words, at)

    def held_by(self, name):
        return {t for t, n in self.owner.items() if n == name}


def summary(xs):
    xs = sorted(xs)
    p = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))]
    return (f"min {xs[0]:.2f} s, p50 {statistics.median(xs):.2f} s, p90 {p(0.9):.2f} s, "
            f"max {xs[-1]:.2f} s")


def main():
    kills = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    terms = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    folder = tempfile.mkdtemp(prefix="warden-failover-")
    pg, url = start_postgres(folder)
    cluster = Cluster(url)
    names = ["n1", "n2", "n3"]
    share = int(sessions / len(names) * 0.7)
    try:
        cluster.start("n1", sessions)
        cluster.start("n2")
        cluster.start("n3")
        cluster.until(lambda: len(cluster.owner) == sessions
                      and all(cluster.held_by(n) for n in names))
        spread = {n: len(cluster.held_by(n)) for n in names}
        print(f"placed: {spread}")
        takeovers, moved = [], []
        for round_ in range(kills):
            victim = random.choice([n for n in names if cluster.held_by(n)])
            held = cluster.held_by(victim)
            cluster.procs[victim].kill()
            killed = time.monotonic()
            cluster.fenced.add(victim)  # a killed process holds no socket
            cluster.until(lambda: all(cluster.owner.get(t) not in (None, victim) for t in held))
            took = cluster.last - killed
            takeovers.append(took)
            moved.append(len(held))
            print(f"kill {round_ + 1:2}: {victim} with {len(held)} sessions, all claimed after "
                  f"{took:.2f} s")
            cluster.procs[victim].wait()
            cluster.start(victim)
            # Rebalancing gives the restarted node its share back (1 session/s per node).
            cluster.settle(victim, share)
            print(f"         {victim} restarted, holds {len(cluster.held_by(victim))} after "
                  f"rebalancing")
        handovers = []
        for round_ in range(terms):
            victim = random.choice([n for n in names if cluster.held_by(n)])
            held = cluster.held_by(victim)
            cluster.procs[victim].terminate()
            stopped = time.monotonic()
            cluster.until(lambda: all(cluster.owner.get(t) not in (None, victim) for t in held))
            handovers.append(cluster.last - stopped)
            print(f"term {round_ + 1}: {victim} with {len(held)} sessions, all claimed after "
                  f"{handovers[-1]:.2f} s")
            cluster.procs[victim].wait()
            cluster.fenced.add(victim)
            cluster.start(victim)
            cluster.settle(victim, share)
        if takeovers:
            print(f"kill -9 takeover, {kills} kills of {sessions} sessions over 3 nodes "
                  f"({statistics.mean(moved):.0f} sessions moved per kill on average): "
                  f"{summary(takeovers)}")
        if handovers:
            print(f"SIGTERM hand-over, {terms} stops: {summary(handovers)}")
        cluster.apply("", ["end"], time.monotonic() + 2 * SUSPECT_FOR)
        print(f"double ownerships: {cluster.doubles}")
    finally:
        for p in cluster.procs.values():
            p.kill()
        pg.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
