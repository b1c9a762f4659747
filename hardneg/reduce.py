"""Concatenate per-model vectors and reduce them with PCA (the paper's step 2).

Each model's vectors are unit-norm; part ``i`` is scaled by ``sqrt(weight_i)`` before concatenation, so the cosine of
two concatenated (un-centred) vectors is the weight-averaged per-model cosine. PCA is fitted on the corpus (or a
random sample of at most ``fit_sample`` rows), keeps the smallest number of components reaching ``variance`` of the
total (or a fixed ``n_components``), and the projected vectors are L2-normalised again. The projection is saved as
``pca.npz`` so serving-time queries can be projected the same way (:meth:`Projection.transform`).

Unspecified by the paper (see docs/paper.md): we fit on the corpus only (not queries), centre on the corpus mean, and
re-normalise after projection. ``variance: null`` and ``n_components: null`` turn PCA off (concatenation only), for the
no-PCA ablation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hardneg.artifacts import atomic_save_npy, atomic_write_json, read_json, staged_output, verify_checksums
from hardneg.embed import l2_normalize
from hardneg.errors import ConfigError, HardnegError

PCA_FILE = "pca.npz"


@dataclass
class Projection:
    mean: np.ndarray  # [d_in] centring vector (corpus mean of the weighted concatenation)
    components: np.ndarray  # [k, d_in] principal axes (rows), float32
    weights: np.ndarray  # [m] model weights (parts are scaled by sqrt(weight))
    models: list[str]  # model slugs, in concatenation order
    part_dims: list[int]  # per-model input width
    explained_variance_ratio: np.ndarray = field(
        default_factory=lambda: np.zeros(0)
    )  # of all input dims, descending

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    def concat(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        return concat_parts(parts, self.weights, self.part_dims)

    def transform(self, parts: Sequence[np.ndarray], batch_size: int = 65536) -> np.ndarray:
        """Per-model vectors (same order as ``models``) -> L2-normalised PCA vectors, float32, in row batches."""
        n = parts[0].shape[0] if parts else 0
        out = np.empty((n, self.n_components), np.float32)
        for s in range(0, n, batch_size):
            x = self.concat([p[s : s + batch_size] for p in parts])
            out[s : s + batch_size] = (x - self.mean) @ self.components.T
        return l2_normalize(out)

    def save(self, path: str | os.PathLike) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            weights=self.weights.astype(np.float64),
            models=np.asarray(self.models, dtype=str),
            part_dims=np.asarray(self.part_dims, dtype=np.int64),
            explained_variance_ratio=self.explained_variance_ratio.astype(np.float64),
        )
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Projection:
        p = Path(path)
        if not p.exists():
            raise HardnegError(f"no PCA projection at {p}: run `hardneg reduce` first")
        z = np.load(p, allow_pickle=False)
        return cls(
            mean=z["mean"],
            components=z["components"],
            weights=z["weights"],
            models=[str(m) for m in z["models"]],
            part_dims=[int(d) for d in z["part_dims"]],
            explained_variance_ratio=z["explained_variance_ratio"],
        )


def concat_parts(
    parts: Sequence[np.ndarray], weights: Sequence[float] | np.ndarray, part_dims: Sequence[int] | None = None
) -> np.ndarray:
    """``[sqrt(w1)*X1, sqrt(w2)*X2, ...]`` as float32. Checks row counts and (if given) widths."""
    if not parts:
        raise ConfigError("no embedding parts to concatenate")
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(parts):
        raise ConfigError(f"{len(parts)} embedding parts but {len(w)} weights")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ConfigError(f"model weights must be finite, >= 0 and not all 0; got {w.tolist()}")
    rows = {p.shape[0] for p in parts}
    if len(rows) != 1:
        raise HardnegError(
            f"embedding parts have different row counts {sorted(rows)}: were they made from the same data?"
        )
    if part_dims is not None and [p.shape[1] for p in parts] != list(part_dims):
        raise HardnegError(
            f"embedding widths {[p.shape[1] for p in parts]} differ from the fitted projection {list(part_dims)}"
        )
    return np.concatenate(
        [np.sqrt(wi).astype(np.float32) * np.asarray(p, np.float32) for wi, p in zip(w, parts, strict=True)],
        axis=1,
    )


def choose_n_components(
    explained_variance_ratio: np.ndarray, variance: float | None, n_components: int | None
) -> int:
    """Smallest k whose cumulative ratio reaches ``variance``; a fixed ``n_components`` wins when set."""
    d = len(explained_variance_ratio)
    if n_components is not None:
        if not 1 <= int(n_components) <= d:
            raise ConfigError(f"reduce.n_components must be in [1, {d}], got {n_components}")
        return int(n_components)
    if variance is None:
        return d
    if not 0.0 < float(variance) <= 1.0:
        raise ConfigError(f"reduce.variance must be in (0, 1], got {variance}")
    cum = np.cumsum(explained_variance_ratio)
    k = int(np.searchsorted(cum, float(variance) - 1e-12) + 1)
    return min(max(k, 1), d)


def fit_projection(
    doc_parts: Sequence[np.ndarray],
    weights: Sequence[float],
    models: Sequence[str],
    variance: float | None = 0.95,
    n_components: int | None = None,
    fit_sample: int | None = 200_000,
    seed: int = 13,
    block: int = 65536,
) -> Projection:
    """Fit PCA on (a sample of) the weighted concatenation of the corpus vectors.

    Uses the eigen-decomposition of the ``d x d`` covariance accumulated in float64 over row blocks, so memory stays
    at one block plus ``d^2`` whatever the corpus size. With ``variance=None`` and ``n_components=None`` the
    projection is the identity (no PCA, concatenation + re-normalisation only).
    """
    part_dims = [int(p.shape[1]) for p in doc_parts]
    n = int(doc_parts[0].shape[0]) if doc_parts else 0
    if n == 0:
        raise HardnegError("cannot fit PCA on an empty corpus")
    d = sum(part_dims)
    w = np.asarray(weights, dtype=np.float64)
    rows = np.arange(n)
    if fit_sample is not None and n > int(fit_sample):
        rows = np.sort(np.random.default_rng(seed).choice(n, size=int(fit_sample), replace=False))
    if variance is None and n_components is None:
        return Projection(
            np.zeros(d, np.float32),
            np.eye(d, dtype=np.float32),
            w,
            list(models),
            part_dims,
            np.full(d, 1.0 / d),
        )
    mean = np.zeros(d, np.float64)
    for s in range(0, len(rows), block):
        mean += concat_parts([p[rows[s : s + block]] for p in doc_parts], w, part_dims).sum(
            axis=0, dtype=np.float64
        )
    mean /= len(rows)
    cov = np.zeros((d, d), np.float64)
    for s in range(0, len(rows), block):
        x = concat_parts([p[rows[s : s + block]] for p in doc_parts], w, part_dims).astype(np.float64) - mean
        cov += x.T @ x
    cov /= max(len(rows) - 1, 1)
    evals, evecs = _eigh_single_thread(cov)  # ascending
    evals, evecs = np.clip(evals[::-1], 0.0, None), evecs[:, ::-1]
    total = evals.sum()
    if total <= 0:
        raise HardnegError("the corpus vectors have zero variance (all identical?): PCA is undefined")
    ratio = evals / total
    k = choose_n_components(ratio, variance, n_components)
    comps = evecs[:, :k].T
    # deterministic signs (as sklearn's svd_flip): the largest-magnitude loading of each axis is positive
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps *= np.where(signs == 0, 1.0, signs)[:, None]
    return Projection(mean.astype(np.float32), comps.astype(np.float32), w, list(models), part_dims, ratio)


def _eigh_single_thread(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.linalg.eigh`` with BLAS limited to one thread (the tridiagonal reduction is BLAS-2 bound:
    :func:`hardneg.hw.blas_single_thread`)."""
    from hardneg.hw import blas_single_thread

    with blas_single_thread():
        return np.linalg.eigh(cov)


# ---------------------------------------------------------------------------------------------- the stage


def _load_model_dir(emb_dir: Path, slug: str) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    mdir = emb_dir / slug
    for f in ("corpus.npy", "queries.npy", "ids.json", "manifest.json"):
        if not (mdir / f).exists():
            raise HardnegError(f"{mdir / f} not found: run `hardneg embed` first (or check --emb-dir)")
    D = np.load(mdir / "corpus.npy", mmap_mode="r")
    Q = np.load(mdir / "queries.npy", mmap_mode="r")
    ids = read_json(mdir / "ids.json", rerun="hardneg embed")
    man = read_json(mdir / "manifest.json", rerun="hardneg embed")
    return D, Q, ids, man


def reduce_embeddings(
    emb_dir: str | os.PathLike, params: Mapping[str, Any], out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Read ``hardneg embed`` output, fit/apply PCA, write ``RED_DIR/{corpus,queries}.npy``, ids, ``pca.npz``,
    ``reduce.json`` and ``lineage.json``. Returns the ``reduce.json`` stats."""
    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, read_lineage, write_lineage

    t0 = time.perf_counter()
    emb = Path(emb_dir)
    top_file = emb / "manifest.json"
    if not top_file.exists():
        raise HardnegError(f"{top_file} not found: run `hardneg embed` first (or check --emb-dir)")
    verify_checksums(emb, "hardneg embed")  # a half-written or modified embeddings folder is refused
    top = read_json(top_file, rerun="hardneg embed")
    from hardneg.settings import section

    cfg = section(params, "reduce")
    slugs: list[str] = list(top["models"])
    if not slugs:
        raise HardnegError(f"{top_file} lists no models")
    loaded = [_load_model_dir(emb, s) for s in slugs]
    ids0 = loaded[0][2]
    for s, (_, _, ids, _) in zip(slugs, loaded, strict=True):
        if ids != ids0:
            raise HardnegError(
                f"{emb / s}/ids.json differs from {slugs[0]}: the models were embedded from different data; rerun `hardneg embed`"
            )
    weights = [float(m["weight"]) for *_, m in loaded] if cfg.weight_models else [1.0] * len(slugs)
    proj = fit_projection(
        [D for D, *_ in loaded],
        weights,
        slugs,
        variance=cfg.variance,
        n_components=cfg.n_components,
        fit_sample=cfg.fit_sample,
        seed=cfg.seed,
    )
    Dr = proj.transform([D for D, *_ in loaded])
    Qr = proj.transform([Q for _, Q, *_ in loaded])
    with staged_output(out_dir, "hardneg reduce") as out:  # published (with checksums) when complete
        atomic_save_npy(out / "corpus.npy", Dr)
        atomic_save_npy(out / "queries.npy", Qr)
        atomic_write_json(out / "doc_ids.json", ids0["doc_ids"])
        atomic_write_json(out / "query_ids.json", ids0["query_ids"])
        proj.save(out / PCA_FILE)
        cum = np.cumsum(proj.explained_variance_ratio)
        stats = {
            "models": slugs,
            "weights": weights,
            "part_dims": proj.part_dims,
            "input_dim": proj.input_dim,
            "n_components": proj.n_components,
            "variance_target": cfg.variance,
            "n_components_fixed": cfg.n_components,
            "explained_variance_kept": round(float(cum[proj.n_components - 1]), 6) if len(cum) else 1.0,
            "fit_rows": int(min(len(ids0["doc_ids"]), cfg.fit_sample or len(ids0["doc_ids"]))),
            "n_docs": int(Dr.shape[0]),
            "n_queries": int(Qr.shape[0]),
            "cumulative_explained_variance": [round(float(c), 6) for c in cum],
            "seconds": round(time.perf_counter() - t0, 3),
            "corpus_sha256": top.get("corpus_sha256"),
        }
        atomic_write_json(out / "reduce.json", stats)
        try:
            inputs = read_lineage(emb).inputs  # the model fingerprints and corpus hash from `hardneg embed`
        except HardnegError:
            inputs = {}
        lin = current_lineage(None).derive(**inputs)
        lin.params_hash = params_hash(dict(params), ["embed", "reduce"])
        write_lineage(out, lin)
    return stats


def load_reduced(red_dir: str | os.PathLike) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """``(doc_vecs, doc_ids, query_vecs, query_ids)`` from a ``hardneg reduce`` output folder."""
    r = Path(red_dir)
    for f in ("corpus.npy", "queries.npy", "doc_ids.json", "query_ids.json"):
        if not (r / f).exists():
            raise HardnegError(f"{r / f} not found: run `hardneg reduce` first (or check --reduced-dir)")
    verify_checksums(r, "hardneg reduce")  # a half-written or modified reduced folder is refused
    D = np.load(r / "corpus.npy")
    Q = np.load(r / "queries.npy")
    doc_ids = read_json(r / "doc_ids.json", rerun="hardneg reduce")
    query_ids = read_json(r / "query_ids.json", rerun="hardneg reduce")
    if len(doc_ids) != D.shape[0] or len(query_ids) != Q.shape[0]:
        raise HardnegError(
            f"{r}: ids and vectors disagree in length (a partial write?): rerun `hardneg reduce`"
        )
    return D, doc_ids, Q, query_ids
