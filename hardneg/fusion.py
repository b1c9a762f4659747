"""Score fusion of the reranker and the first stage, shared by evaluation and serving (so what is served is what
was measured): per query, z-normalise both score lists, then ``w * z(reranker) + (1 - w) * z(first_stage)``.
``w`` is tuned on the dev split and stored in the exported model's metadata."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def zscore(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a
    sd = a.std()
    return (a - a.mean()) / sd if sd > 1e-12 else np.zeros_like(a)


def fuse(
    reranker_scores: Sequence[float] | np.ndarray,
    first_stage_scores: Sequence[float] | np.ndarray,
    weight: float,
) -> np.ndarray:
    """Fused scores for one query's candidates. weight=1: reranker only; weight=0: first stage only."""
    r, f = np.asarray(reranker_scores, dtype=np.float64), np.asarray(first_stage_scores, dtype=np.float64)
    if r.shape != f.shape:
        raise ValueError(f"reranker and first-stage scores differ in length: {r.shape} vs {f.shape}")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return weight * zscore(r) + (1.0 - weight) * zscore(f)
