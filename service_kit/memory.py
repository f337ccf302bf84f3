"""glibc malloc tuning of a service process: large blocks go back to the system when freed."""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger("embedsearch")

_M_MMAP_THRESHOLD = -3  # mallopt's parameter number (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value: the store's default


def return_large_blocks_to_the_system(threshold: int) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes, so every block that large is mapped on
    its own and unmapped when freed; True if it was set.

    By default glibc raises the threshold (up to 32 MiB) each time such a block is freed, after
    which large blocks come from the per-thread heaps instead. Under concurrent requests, Lance's
    and Arrow's buffers then fragment those heaps and resident memory keeps growing (measured on
    the store: 755 MiB peak after 60 s of concurrent adds and searches, 434 MiB with this). The
    price is a page fault per page of every such block: the model's tensors, allocated anew at
    each forward pass, ran 20-25 % slower with it, so the embedder keeps glibc's default.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, say): nothing to tune
        return False
    if not libc.mallopt(_M_MMAP_THRESHOLD, threshold):
        log.warning("could not set glibc's mmap threshold")
        return False
    return True
