"""dart.host_memory: on glibc, freed blocks stay in the process, so a forward's buffers do not land on
fresh (faulting, zeroed) pages again; elsewhere nothing changes."""
import ctypes
import subprocess
import sys

import pytest

GLIBC = hasattr(ctypes.CDLL(None), "gnu_get_libc_version")

# A forward's buffers (MiB), allocated and written together, then freed: the faults of the last rounds.
# "returning" pins glibc's mmap threshold at its initial 128 KiB, so every such block goes back to the OS
# when freed (the default does so until its threshold has risen past the block sizes a forward uses).
CHURN = """
import ctypes, resource, sys, torch
from dart.host_memory import M_MMAP_THRESHOLD, keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
else:
    assert ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 128 << 10)
def churn():
    held = [torch.ones(n << 18) for n in (6, 12, 6, 24, 1)]
    del held
for _ in range(6):      # the heap settles on the blocks' layout in a few rounds
    churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting):
    done = subprocess.run([sys.executable, "-c", CHURN, setting], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="the heap setting is glibc's (mallopt); other C libraries keep their own")
def test_kept_blocks_do_not_fault_again_where_a_returning_heap_does():
    pages = 4 * sum((6, 12, 6, 24, 1)) * 256          # 4 KiB pages written in the measured rounds
    assert faults("returning") > pages // 2
    assert faults("keep") < pages // 8         # a returning heap faults every round
