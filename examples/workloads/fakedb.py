"""A stand-in "database" for demos and tests: holds MEMORY_MB of touched memory and appends a
monotonic heartbeat line to HEARTBEAT_FILE every HEARTBEAT_MS. Exits 0 on SIGTERM/SIGINT after
writing "shutdown", like a database doing a clean shutdown.

Env: FAKEDB_MB (100), FAKEDB_HEARTBEAT (file; default stdout only), FAKEDB_INTERVAL_MS (100),
FAKEDB_GROW_MB_S (0: grow this many MB per second, to push the primary past its watermark).
"""

import os
import signal
import sys
import time

MB = 1 << 20
PAGE = 4096


def touched(n):
    """n bytes, every page written once: resident and charged to the cgroup, without the CPU
    cost of filling them (which matters ~17x under an emulated CPU)."""
    buf = bytearray(n)
    buf[::PAGE] = b"x" * len(range(0, n, PAGE))
    return buf
stop = False


def on_stop(signum, frame):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_stop)
signal.signal(signal.SIGINT, on_stop)

size = int(os.environ.get("FAKEDB_MB", "100"))
interval = int(os.environ.get("FAKEDB_INTERVAL_MS", "100")) / 1000
grow = float(os.environ.get("FAKEDB_GROW_MB_S", "0"))
path = os.environ.get("FAKEDB_HEARTBEAT")
blocks = []
for _ in range(size):
    blocks.append(touched(MB))  # touched, so it is resident and charged
out = open(path, "a", buffering=1) if path else sys.stdout
out.write(f"ready pid={os.getpid()} mb={size}\n")
out.flush()
start = time.monotonic()
grown = 0.0
while not stop:
    now = time.monotonic()
    out.write(f"beat {now:.3f} pid={os.getpid()}\n")
    out.flush()
    if grow:
        want = grow * (now - start)
        while grown < want:
            blocks.append(touched(MB))
            grown += 1
    time.sleep(interval)
out.write(f"shutdown pid={os.getpid()}\n")
out.flush()
sys.exit(0)
