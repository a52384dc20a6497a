#!/usr/bin/env python3
"""How much the first write to a new page-cache page costs on this machine, and how much
the same costs with pages the kernel has just freed: the tax every broker pays per page of
log it grows into (wasmq's commitlog through mmap, NATS's file store through write()).

On a VM whose memory the host backs on first touch (Firecracker, or any guest with free
page reporting), a never-touched guest page costs about ten times a reused one; this
machine measured 7.2 µs against 0.74 µs per 4 KiB page. In compare.sh that is several
microseconds of each system's CPU per 1 KiB message over three replicas, and it is not
what a long-running production host pays.

    python3 examples/bench/first_touch.py [MiB per round, default 256] [rounds, default 4]

Each round creates a file of that size in $TMPDIR (default /tmp), maps it, writes one byte
per page, then deletes it, so round 2 onwards mostly gets the pages round 1 freed.
"""
import mmap
import os
import sys
import tempfile
import time

PAGE = 4096


def main() -> None:
    mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    if not (1 <= mib <= 4096 and 1 <= rounds <= 20):
        sys.exit("MiB per round must be 1..4096 and rounds 1..20")
    size = mib << 20
    for r in range(rounds):
        fd, path = tempfile.mkstemp(prefix="first-touch.")
        try:
            os.posix_fallocate(fd, 0, size)
            with mmap.mmap(fd, size, mmap.MAP_SHARED) as m:
                start = time.perf_counter()
                for off in range(0, size, PAGE):
                    m[off] = 1
                elapsed = time.perf_counter() - start
        finally:
            os.close(fd)
            os.unlink(path)
        print(f"round {r + 1}: {elapsed * 1e6 / (size // PAGE):.2f} us per page ({mib} MiB)")


if __name__ == "__main__":
    main()
