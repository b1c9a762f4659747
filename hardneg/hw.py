"""What the CPU can do fast: bf16 autocast only where the CPU has native bf16 matrix units.

On CPUs with AMX or AVX512-BF16 (Intel Sapphire Rapids and later, AMD Zen 4 and later) bf16 autocast roughly doubles
MiniLM throughput at cosine 1.0000 against fp32. Without them PyTorch emulates bf16 matmuls: measured on an AVX2-only
AMD EPYC, 0.6 GFLOP/s bf16 against 20 GFLOP/s fp32 on one thread (35x slower). So ``bf16: auto`` (the default in
params.yaml) turns autocast on only when ``/proc/cpuinfo`` lists ``amx_bf16`` or ``avx512_bf16``; ``true``/``false``
force it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hardneg.errors import ConfigError

BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in Linux ``/proc/cpuinfo`` (``("unknown", {})`` elsewhere)."""
    model, flags = "unknown", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[-1].strip()
        elif line.startswith("flags") and not flags:
            flags = frozenset(line.split(":", 1)[-1].split())
    return model, flags


def native_bf16() -> bool:
    """True when the CPU advertises native bf16 matrix instructions (Linux ``/proc/cpuinfo``; False elsewhere)."""
    return any(f in _cpuinfo()[1] for f in BF16_FLAGS)


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


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None


def cgroup_cpu_quota(root: str | os.PathLike = "/sys/fs/cgroup") -> float | None:
    """The container's CPU limit in CPUs (Kubernetes ``resources.limits.cpu``), or ``None`` when unlimited/unknown.

    cgroup v2: ``<root>/cpu.max`` (``"200000 100000"`` = 2 CPUs, ``"max 100000"`` = none); cgroup v1:
    ``<root>/cpu/cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1 = none)."""
    base = Path(root)
    v2 = _read(base / "cpu.max")
    if v2:
        parts = v2.split()
        if len(parts) == 2 and parts[0] != "max":
            try:
                quota, period = float(parts[0]), float(parts[1])
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
        return None
    for d in (base / "cpu", base / "cpu,cpuacct"):
        q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if q is not None and p is not None:
            try:
                quota, period = float(q), float(p)
            except ValueError:
                return None
            return quota / period if quota > 0 and period > 0 else None
    return None


def cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> int:
    """CPUs this process should size its thread pools for: the cgroup CPU quota rounded up (a pod's CPU limit; more
    threads than the quota get throttled mid-GEMM), capped by the CPU affinity mask (``os.cpu_count`` where that is
    unavailable). At least 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        n = min(n, math.ceil(quota - 1e-9))
    return max(1, n)


def blas_single_thread():
    """A context manager limiting BLAS to one thread. For BLAS-2 bound or many-small-product work (PCA's ``eigh``,
    the miner's thousands of ``[P, d] x [d, K]`` products) on a 2-core machine shared with other jobs,
    multi-threaded OpenBLAS was ~10-35x slower (eigh d=1152: 10.8 s vs 0.3 s; selection of 600 queries x 738
    candidates: 17 s vs 0.6 s). Without threadpoolctl (scikit-learn's dependency) BLAS keeps its threads."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


MATRIX_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_bf16",
    "amx_int8",
    "amx_tile",
)


def cpu_info() -> dict[str, Any]:
    """The CPU a benchmark ran on: model name, logical CPUs, and the matrix-relevant flags it advertises."""
    model, flags = _cpuinfo()
    return {"model": model, "cpus": os.cpu_count(), "flags": [f for f in MATRIX_FLAGS if f in flags]}
