"""The process heap of a model running on a CPU: freed blocks kept for the next forward.

glibc hands a block above its mmap threshold (128 KiB at first, raised as large blocks are freed, at
most 32 MiB) straight back to the OS when freed, and trims the heap's top beyond twice that threshold.
A forward's activations then land on fresh pages each time, and the kernel zeroes every page at its
first touch: a 4-row, 512-token dense bf16 prompt of SmolLM2-135M took about 100k page faults (400 MiB
zeroed) per prompt, none once freed blocks are kept (bench/README.md section 19)."""
from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3             # glibc's mallopt parameters
MMAP_THRESHOLD_BYTES = 32 << 20      # blocks up to glibc's largest threshold come from the heap, and stay
TRIM_THRESHOLD_BYTES = 1 << 30       # free memory at the heap's top kept up to this much


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks in this process (about one forward's activations stay mapped after
    it). False, and nothing changed, where the C library is not glibc."""
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):
        log.debug("not glibc: the allocator keeps its own policy")
        return False
    kept = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    log.debug("glibc keeps freed blocks up to %d MiB: %s", MMAP_THRESHOLD_BYTES >> 20, kept)
    return kept


def configure_cpu_process(threads: int) -> None:
    """A process that runs a model on the CPU for its life: torch's threads, and freed blocks kept."""
    import torch

    torch.set_num_threads(threads)
    keep_freed_memory()
