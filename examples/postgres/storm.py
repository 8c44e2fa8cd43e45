"""A memory storm without stress-ng's self-sacrifice: STORM_BYTES in all, split evenly over
STORM_WORKERS forked processes, every page touched once, held for STORM_SECONDS, then exit 0.

backup-job.sh runs this instead of stress-ng when STORM_TOOL=python. Why it exists: stress-ng's
vm workers set their own oom_score_adj to 1000, so the kernel kills them first wherever they
run. A real backup job does not do that, and tools/bench_postgres.py compares what the kernel
does to an *unadjusted* job in a plain container with what oomguard does. These processes keep
the oom_score_adj they inherit (0 in a plain container, the sidecar's value under oomguard).

Sizes take K/M/G suffixes (powers of 1024). The default action of SIGTERM ends it at once.
"""

import os
import sys
import time

PAGE = 4096
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def size(text):
    text = text.strip().upper().removesuffix("B")
    unit = text[-1:] if text[-1:] in UNITS else ""
    return int(float(text[: len(text) - len(unit)]) * UNITS[unit])


def hog(nbytes, hold):
    # bytearray(n) is calloc'ed: zero pages that are neither resident nor charged until written.
    # Writing one byte per page makes all of it resident, without the CPU cost of filling it.
    buf = bytearray(nbytes)
    buf[::PAGE] = b"x" * len(range(0, nbytes, PAGE))
    time.sleep(hold)
    del buf


def main():
    total = size(os.environ.get("STORM_BYTES", "320M"))
    workers = max(1, int(os.environ.get("STORM_WORKERS", "1")))
    hold = float(os.environ.get("STORM_SECONDS", "60"))
    children = []
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:
            try:
                hog(total // workers, hold)
            finally:
                os._exit(0)
        children.append(pid)
    status = 0
    for pid in children:
        _, st = os.waitpid(pid, 0)
        if st != 0:
            status = 1  # a worker was killed (e.g. by the OOM killer)
    sys.exit(status)


if __name__ == "__main__":
    main()
