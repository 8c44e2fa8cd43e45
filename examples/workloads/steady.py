"""A well-behaved sidecar: holds STEADY_MB megabytes and idles."""

import os
import signal
import sys

MB = 1 << 20
held = [bytearray(b"x" * MB) for _ in range(int(os.environ.get("STEADY_MB", "20")))]
print(f"steady: pid={os.getpid()} holding {len(held)} MB", flush=True)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
