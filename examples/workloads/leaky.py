"""A leaky sidecar: allocates LEAK_MB_S megabytes per second (touched) until something stops it.
Env: LEAK_MB_S (20), LEAK_START_MB (0), LEAK_STEP_MS (50)."""

import os
import time

MB = 1 << 20
PAGE = 4096


def touched(n):
    """n bytes, every page written once: resident and charged to the cgroup, without the CPU
    cost of filling them (which matters ~17x under an emulated CPU)."""
    buf = bytearray(n)
    buf[::PAGE] = b"x" * len(range(0, n, PAGE))
    return buf
rate = float(os.environ.get("LEAK_MB_S", "20"))
step = int(os.environ.get("LEAK_STEP_MS", "50")) / 1000
held = [touched(MB) for _ in range(int(os.environ.get("LEAK_START_MB", "0")))]
print(f"leaky: pid={os.getpid()} leaking {rate:g} MB/s", flush=True)
start = time.monotonic()
while True:
    want = int(rate * (time.monotonic() - start))
    while len(held) < want:
        held.append(touched(MB))
    time.sleep(step)
