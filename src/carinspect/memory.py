"""glibc's allocator, told to give large blocks back: memory bounded by design stays bounded.

glibc raises its mmap threshold each time a block above it is freed (up to 32 MiB); after that,
blocks of tens of MiB (a run of images a loader reads, a decoded photo's 16 MiB Pillow blocks)
come from the heap of the thread that asked, and stay there when freed. A server whose decodes
take turns on two threads then holds two decodes' worth, and a loader worker grows over an
epoch. With the threshold fixed, every block of ``size`` or more is its own mmap, returned on
free.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def fixed_mmap_threshold(size: int = 1 << 20) -> None:
    """Serve every allocation of ``size`` bytes or more with its own mmap. No-op off glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, size)
    except (OSError, AttributeError):
        pass
