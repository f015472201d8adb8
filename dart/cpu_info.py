"""What the CPU offers for bfloat16, read from /proc/cpuinfo; no torch here, so a driver that sizes its
actors reads it without loading a model library."""
from __future__ import annotations

NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def native_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str] | None:
    """The CPU's flags that run bfloat16 natively ([] for none); None where the platform does not say."""
    try:
        with open(cpuinfo, encoding="utf-8") as info:
            flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    except OSError:
        return None
    return [flag for flag in NATIVE_BF16_FLAGS if flag in flags]
