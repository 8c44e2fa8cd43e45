"""A well-behaved sidecar: holds STEADY_MB megabytes and idles."""

import os
import signal
import sys

MB = 1 << 20
PAGE = 4096


def touched(n):
    """n bytes, every page written once: resident and charged to the cgroup, without the CPU
    cost of filling them (which matters ~17x under an emulated CPU)."""
    buf = bytearray(n)
    buf[::PAGE] = b"x" * len(range(0, n, PAGE))
    return buf
held = [touched(MB) for _ in range(int(os.environ.get("STEADY_MB", "20")))]
print(f"steady: pid={os.getpid()} holding {len(held)} MB", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
