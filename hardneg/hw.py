"""What the CPU can do fast: bf16 autocast only where the CPU has native bf16 matrix units.

On CPUs with AMX or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) bf16 autocast roughly doubles
MiniLM throughput at cosine 1.0000 against fp32. Without them PyTorch emulates bf16 matmuls: measured on an AVX2-only
AMD EPYC, 0.6 GFLOP/s bf16 against 20 GFLOP/s fp32 on one thread (35x slower). So ``bf16: auto`` (the default in
params.yaml) turns autocast on only when ``/proc/cpuinfo`` lists ``amx_bf16`` or ``avx512_bf16``; ``true``/``false``
force it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardneg.errors import ConfigError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True when the CPU advertises native bf16 matrix instructions (Linux ``/proc/cpuinfo``; False elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[-1].split())
            break
    return any(f in flags for f in BF16_FLAGS)


def use_bf16(setting: Any) -> bool:
    """Resolve a params ``bf16`` value: ``auto``/None -> :func:`native_bf16`; booleans as given."""
    if setting is None or setting == "auto":
        return native_bf16()
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"bf16 must be auto, true or false, got {setting!r}")


def apply_torch_threads(params: Mapping[str, Any]) -> int:
    """Set torch's intra-op threads from ``train.torch_threads`` (null: leave torch's default); returns the count.

    On a shared 2-core machine, 2 threads were 6x slower than 1 (a MiniLM training step of 32 pairs at 128 tokens:
    9.0 s vs 1.5 s; scoring 20 vs 150 pairs/s) because the threads wait on each other whenever another process holds
    a core; on an idle many-core machine, more threads are faster."""
    import torch

    n = params.get("train", {}).get("torch_threads")
    if n:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
