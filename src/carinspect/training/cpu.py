"""What the CPU can do for training: the instruction-set flags that make bf16 worth using.

bf16 autocast on a CPU is only faster where the CPU multiplies bf16 in hardware (AVX-512 BF16
on Cooper Lake, Sapphire Rapids and Zen 4 on; AMX tiles on Sapphire Rapids on). Elsewhere
PyTorch emulates it and training gets slower, so fp32 is kept there.
"""

from __future__ import annotations

import functools
from pathlib import Path

BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags as Linux lists them (empty where there is no /proc/cpuinfo)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def bf16_in_hardware(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes bf16 natively (``flags``: the CPU's own when not given)."""
    return bool(BF16_FLAGS & (cpu_flags() if flags is None else flags))
