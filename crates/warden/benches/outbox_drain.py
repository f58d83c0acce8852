#!/usr/bin/env python3
"""Outbox benchmark: M messages queued across N connected sessions through the control socket,
drained against warden-fakewa in its own process (whose fake contacts decrypt every copy).

    cargo build --release -p warden -p warden-fakewa
    python3 crates/warden/benches/outbox_drain.py 100 1000 600000   # N sessions, M messages, per_minute

It pairs N sessions, watches every event, then sends the M messages in one pipelined burst
(round robin over the sessions, each with its own key) and records, per message, when its
`send_text` was answered (accepted: stored) and when its `message_status` event said `sent`
(the server acknowledged it; or `delivered`, when the receipt overtook the ack). Printed: the burst's accept rate, the drain's messages per second
(M over first accept to last sent), and the p50/p99/max of accepted → sent.
per_minute is [outbox] per_minute: 600000 takes the pacing out (what the machine can do);
the default, 20, is the rate a careful operator would run with.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from daemon_scale import BIN, Control, free_port, start_daemon, wait_connected, write_config  # noqa: E402


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    m = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    per_minute = sys.argv[3] if len(sys.argv) > 3 else "600000"
    port = free_port()
    fake = subprocess.Popen([os.path.join(BIN, "warden-fakewa"), "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tempfile.mkdtemp(prefix="warden-outbox-bench-")
    write_config(work, port)
    env = dict(os.environ, WARDEN_OUTBOX_PER_MINUTE=per_minute)
    try:
        proc, c = start_daemon(work, env)
        tokens = [f"s{i}" for i in range(n)]
        assert all(a.get("ok") for a in c.many([{"op": "create", "token": t} for t in tokens]))
        assert all(a.get("ok") for a in c.many([{"op": "start", "token": t} for t in tokens]))
        wait_connected(c, n)

        sent_at = {}
        done = threading.Event()
        watcher = Control(os.path.join(work, "warden.sock"))
        watcher.file.write((json.dumps({"id": 0, "op": "watch"}) + "\n").encode())
        watcher.file.flush()

        def watch():
            for raw in watcher.file:
                if b'"message_status"' not in raw and b'"closed"' not in raw:
                    continue
                event = json.loads(raw)
                if event.get("event") == "closed":
                    print(f"the watch was closed: {event['reason']}", file=sys.stderr)
                    os._exit(1)
                # A receipt can overtake the server's ack (they travel apart): a message may go
                # from queued straight to delivered. Either is "the server has it".
                if event.get("event") == "message_status" and event["message"]["status"] in ("sent", "delivered", "read"):
                    sent_at.setdefault(event["message"]["message_id"], time.time())
                    if len(sent_at) >= m:
                        done.set()
                        return

        threading.Thread(target=watch, daemon=True).start()
        time.sleep(1)  # the watch's first lines (every session's state) are read by then

        requests = [{"op": "send_text", "token": tokens[i % n], "to": f"1555700{i % 10000:04d}",
                     "text": f"message {i}", "key": f"k{i}"} for i in range(m)]
        accepted_at = {}
        t0 = time.time()
        # One pipelined burst, written by its own thread (replies must be read meanwhile, or
        # both sides' buffers fill); each answer's arrival is its acceptance time.
        def write_all():
            for i, req in enumerate(requests):
                c.file.write((json.dumps(dict(req, id=i + 1)) + "\n").encode())
            c.file.flush()

        threading.Thread(target=write_all, daemon=True).start()
        for _ in range(m):
            line = json.loads(c.file.readline())
            assert line.get("ok"), line
            accepted_at[line["result"]["message_id"]] = time.time()
        burst = time.time() - t0
        if not done.wait(timeout=3600):
            raise SystemExit(f"only {len(sent_at)} of {m} sent")
        first = min(accepted_at.values())
        last = max(sent_at.values())
        latencies = [sent_at[i] - accepted_at[i] for i in accepted_at]
        print(f"{n} sessions, {m} messages, per_minute {per_minute}: accepted in {burst:.2f} s "
              f"({m / burst:.0f}/s); drained in {last - first:.2f} s ({m / (last - first):.0f} messages/s); "
              f"accepted → sent p50 {percentile(latencies, 50) * 1000:.0f} ms, "
              f"p99 {percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms")
        proc.terminate()
        proc.wait(timeout=60)
    finally:
        fake.terminate()


if __name__ == "__main__":
    main()
