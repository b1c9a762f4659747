"""Hard-negative selection policies (arXiv 2505.18366 and baselines), with false-negative and leakage guards.

Distances are cosine distances ``d = 1 - cos`` between L2-normalised vectors (in the PCA space of ``hardneg
reduce``). Candidates come from an exact faiss top-K search per query (``mine.top_k``).

Policies (``mine.policy``):

- ``paper`` (arXiv 2505.18366): keep D if ``d(Q,D) < d(Q,P)`` (condition 1) and ``d(Q,D) < d(P,D)`` (condition 2);
  the primary negative is the qualifying D with the smallest ``d(Q,D)`` (``paper_num_negatives``, default 1).
  *Several positives*: D must satisfy both conditions against **each** positive of the query in the mined split
  (so it is closer to Q than the closest positive, and closer to Q than to any positive); every (Q, P) row of that
  query gets the same negatives. *Top-K vs the paper's full scan*: every D meeting condition 1 scores above the best
  positive, so the top-K list holds all of them whenever it reaches the best positive's score; otherwise, when fewer
  than n negatives were found, that query's condition-1 region is re-scanned exactly over the whole corpus
  (``rescan``), so the result equals the paper's full scan. Queries with no qualifying D get rows with
  ``negative_ids: []`` and are counted.
- ``positive-aware`` (NV-Retriever TopK-PercPos): drop D with ``sim(Q,D) > perc_pos * sim(Q,P)`` against the least
  similar positive (sign-safe: ``s - (1 - perc_pos) * |s|``), take the top n by ``sim(Q,D)``. When the top-K window
  lies entirely above the cap (the positive ranks far down), ``rescan`` takes the top-K documents *below* the cap
  instead (the NV-Retriever definition; a fixed rank window, as in sentence-transformers' ``range_max``, would return
  nothing for exactly the queries the first stage gets most wrong). Same for ``hybrid``.
- ``hybrid`` (ours): condition 2 against each positive + the positive-aware cap, ranked by closeness to Q, n
  negatives (group losses need several), and negatives that are near-duplicates of an already chosen negative are
  skipped (``dedup_negatives``), so a group does not spend slots on the same text twice.
- ``rank-window``: the candidates ranked ``rank_min .. rank_max - 1`` after the guards, top n.
- ``random``: uniform from the corpus minus the guarded documents. ``bm25``: BM25 top-k minus the guarded documents.

Guards (all policies): never a labelled positive of the query (in the mined split: the only labels mining reads);
never a document with the same (whitespace/case-normalised) text as a positive; never a near-duplicate of a positive
(``cos(P,D) >= dedup_sim``). Every candidate that is not selected is attributed to the first rule that rejected it
(``mine_stats.json`` ``rejected``).

Honest protocol: mining reads the qrels of the mined split (train) only. An earlier version also removed every dev/test
positive from the candidate pools ("leakage guard"): that made the training data depend on test labels, which no real
user has, so it is gone; a test checks that changing dev/test qrels does not change the mined negatives.

The selection rules are small pure numpy functions (``paper_conditions``, ``positive_aware_keep``, ...) over the
arrays of one query, unit-tested on hand-made vectors.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hardneg.errors import ConfigError, HardnegError

log = logging.getLogger(__name__)

Policy = Literal["paper", "positive-aware", "hybrid", "rank-window", "random", "bm25"]
POLICIES: tuple[str, ...] = ("paper", "positive-aware", "hybrid", "rank-window", "random", "bm25")

# rejection rules, in the order they are checked (a candidate is attributed to the first that rejects it)
RULES: tuple[str, ...] = (
    "labelled_positive",  # a positive of this query (mined split)
    "duplicate_text",  # same normalised text as a positive of this query (another id)
    "near_duplicate",  # cos(P, D) >= dedup_sim for a positive P
    "cond1_not_closer_than_positive",  # paper: d(Q,D) >= d(Q,P) for some positive
    "cond2_closer_to_positive",  # paper/hybrid: d(Q,D) >= d(P,D) for some positive
    "above_perc_pos",  # positive-aware/hybrid: sim(Q,D) > perc_pos * sim(Q,P_min)
    "outside_rank_window",  # rank-window
    "duplicate_of_negative",  # hybrid: near-duplicate of an already selected negative
)
_RULE_CODE = {r: i + 1 for i, r in enumerate(RULES)}
NEGATIVES_FILE = "negatives.jsonl"
STATS_FILE = "mine_stats.json"
HIST_BINS = np.linspace(0.0, 2.0, 41)  # cosine distance range [0, 2], 0.05 wide


# ------------------------------------------------------------------------------------------ pure selection rules


def paper_conditions(d_qd: np.ndarray, d_qp: np.ndarray, d_pd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's two conditions, against every positive.

    Args:
        d_qd: ``[K]`` d(Q, D) of the candidates.
        d_qp: ``[P]`` d(Q, P) of the query's positives.
        d_pd: ``[P, K]`` d(P, D).
    Returns:
        ``(cond1, cond2)`` boolean ``[K]``: cond1 = ``d(Q,D) < d(Q,P)`` for all P; cond2 = ``d(Q,D) < d(P,D)`` for all P.
    """
    d_qd = np.asarray(d_qd, np.float64)
    d_qp = np.atleast_1d(np.asarray(d_qp, np.float64))
    d_pd = np.asarray(d_pd, np.float64).reshape(len(d_qp), len(d_qd))
    cond1 = np.all(d_qd[None, :] < d_qp[:, None], axis=0) if len(d_qp) else np.ones(len(d_qd), bool)
    cond2 = np.all(d_qd[None, :] < d_pd, axis=0) if len(d_qp) else np.ones(len(d_qd), bool)
    return cond1, cond2


def perc_pos_threshold(s_qp: np.ndarray, perc_pos: float) -> float:
    """Highest allowed sim(Q,D): ``perc_pos`` of the least similar positive's sim, sign-safe.

    For ``s >= 0`` this is ``perc_pos * s``; for ``s < 0`` (possible after PCA centring) it is ``s - (1-perc_pos)*|s|``,
    so the cap is always *below* the positive (the sign bug of sentence-transformers #3819 does not apply).
    """
    s = float(np.min(s_qp))
    return s - (1.0 - float(perc_pos)) * abs(s)


def positive_aware_keep(s_qd: np.ndarray, s_qp: np.ndarray, perc_pos: float) -> np.ndarray:
    """NV-Retriever TopK-PercPos: keep D with ``sim(Q,D) <= perc_pos * sim(Q,P)`` (least similar positive)."""
    return np.asarray(s_qd, np.float64) <= perc_pos_threshold(s_qp, perc_pos) + 1e-7


def near_duplicate(s_pd: np.ndarray, dedup_sim: float) -> np.ndarray:
    """``[K]`` True where D is a near-duplicate (``cos >= dedup_sim``) of any positive (``s_pd`` is ``[P, K]``)."""
    s_pd = np.asarray(s_pd)
    if s_pd.size == 0:
        return np.zeros(s_pd.shape[-1] if s_pd.ndim else 0, bool)
    return np.any(s_pd >= float(dedup_sim) - 1e-7, axis=0)


def rank_window_keep(n: int, rank_min: int, rank_max: int) -> np.ndarray:
    """``[n]`` True for positions ``rank_min <= i < rank_max``."""
    r = np.arange(n)
    return (r >= int(rank_min)) & (r < int(rank_max))


def first_rejection(checks: Sequence[tuple[str, np.ndarray]], k: int) -> np.ndarray:
    """``[k]`` int codes: 0 = passed every check, else the code (``RULES`` index + 1) of the first failed check.

    ``checks`` are ``(rule, reject_mask)`` in priority order.
    """
    code = np.zeros(k, np.int16)
    for rule, rej in checks:
        code[(code == 0) & np.asarray(rej, bool)] = _RULE_CODE[rule]
    return code


def take_top(code: np.ndarray, n: int) -> np.ndarray:
    """Positions of the first ``n`` candidates with code 0 (candidates are ordered best first)."""
    return np.flatnonzero(code == 0)[: max(0, int(n))]


def take_diverse(
    code: np.ndarray, cand_vecs: np.ndarray, n: int, dup_sim: float, text_groups: np.ndarray | None = None
) -> np.ndarray:
    """Like :func:`take_top`, but skips a candidate whose cosine to an already taken one is ``>= dup_sim`` or that
    shares its text group (marks it ``duplicate_of_negative`` in ``code``, in place)."""
    taken: list[int] = []
    for i in np.flatnonzero(code == 0):
        if len(taken) >= n:
            break
        if taken:
            sims = cand_vecs[taken] @ cand_vecs[i]
            same_text = (
                text_groups is not None
                and text_groups[i] >= 0
                and bool(np.any(text_groups[taken] == text_groups[i]))
            )
            if same_text or float(sims.max()) >= dup_sim - 1e-7:
                code[i] = _RULE_CODE["duplicate_of_negative"]
                continue
        taken.append(int(i))
    return np.asarray(taken, np.int64)


def count_codes(code: np.ndarray, selected: np.ndarray) -> dict[str, int]:
    """Per-rule rejected counts of one query (selected positions are excluded; unused eligible ones too)."""
    counts = np.bincount(code.astype(np.int64), minlength=len(RULES) + 1)
    return {r: int(counts[_RULE_CODE[r]]) for r in RULES if counts[_RULE_CODE[r]]}


# ------------------------------------------------------------------------------------------------ text duplicates


def normalize_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().casefold()


def text_duplicate_groups(texts: Iterable[str]) -> np.ndarray:
    """``[n]`` group id per text; texts whose normalised form occurs more than once share an id, others get -1."""
    seen: dict[bytes, int] = {}
    keys: list[bytes] = []
    for t in texts:
        k = hashlib.blake2b(normalize_text(t).encode("utf-8", "surrogatepass"), digest_size=16).digest()
        keys.append(k)
        seen[k] = seen.get(k, 0) + 1
    gid: dict[bytes, int] = {}
    out = np.full(len(keys), -1, np.int64)
    for i, k in enumerate(keys):
        if seen[k] > 1:
            out[i] = gid.setdefault(k, len(gid))
    return out


# ------------------------------------------------------------------------------------------------------ config


@dataclass(frozen=True)
class MineConfig:
    policy: str = "hybrid"
    top_k: int = 100
    index: str = "flat"
    num_negatives: int = 7
    paper_num_negatives: int = 1
    rescan: bool = True
    perc_pos: float = 0.95
    dedup_sim: float = 0.98
    dedup_negatives: bool = True
    rank_min: int = 0
    rank_max: int = 30
    seed: int = 13
    search_batch_size: int = 4096

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **overrides: Any) -> MineConfig:
        """From full params (``params['mine']``) or a bare mine section; ``overrides`` win (``None`` ignored)."""
        known = set(cls.__dataclass_fields__)
        if not isinstance(params, Mapping):
            raise ConfigError(f"params must be a mapping, got {type(params).__name__}")
        sec = dict(params["mine"]) if "mine" in params else (dict(params) if set(params) <= known else {})
        sec.update({k: v for k, v in overrides.items() if v is not None})
        unknown = sorted(set(sec) - known)
        if unknown:
            raise ConfigError(f"unknown mine option(s) {unknown}; known: {sorted(known)}")
        cfg = cls(**sec)
        cfg.validate()
        return cfg

    @property
    def n(self) -> int:
        return int(self.paper_num_negatives if self.policy == "paper" else self.num_negatives)

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown mining policy '{self.policy}'; use one of {list(POLICIES)}")
        if self.n < 1:
            raise ConfigError(f"the number of negatives must be >= 1, got {self.n}")
        if self.top_k < 1:
            raise ConfigError(f"mine.top_k must be >= 1, got {self.top_k}")
        if not 0.0 < self.perc_pos <= 1.0:
            raise ConfigError(f"mine.perc_pos must be in (0, 1], got {self.perc_pos}")
        if not -1.0 <= self.dedup_sim <= 1.0:
            raise ConfigError(f"mine.dedup_sim must be a cosine in [-1, 1], got {self.dedup_sim}")
        if not 0 <= self.rank_min < self.rank_max:
            raise ConfigError(
                f"need 0 <= mine.rank_min < mine.rank_max, got {self.rank_min}..{self.rank_max}"
            )
        if self.policy == "rank-window" and self.rank_max - self.rank_min < self.num_negatives:
            log.warning(
                "rank window %d..%d is narrower than num_negatives=%d",
                self.rank_min,
                self.rank_max,
                self.num_negatives,
            )


# -------------------------------------------------------------------------------------------------- the miner


@dataclass
class _QueryResult:
    selected: np.ndarray  # doc indices, best first
    s_qd: np.ndarray  # sims Q-D of the selected
    counts: dict[str, int]
    considered: int
    eligible_unused: int
    rescanned: bool = False


def _check_unit(name: str, X: np.ndarray) -> None:
    if X.ndim != 2:
        raise HardnegError(f"{name} must be a 2-D matrix, got shape {X.shape}")
    if X.shape[0] == 0:
        return
    rows = X[np.linspace(0, X.shape[0] - 1, num=min(X.shape[0], 256)).astype(np.int64)]
    norms = np.linalg.norm(np.asarray(rows, np.float64), axis=1)
    if np.abs(norms - 1.0).max() > 1e-3:
        raise HardnegError(
            f"{name} are not L2-normalised (norms {norms.min():.3f}..{norms.max():.3f}); use the output of `hardneg reduce`"
        )


class _Miner:
    def __init__(
        self,
        dataset,
        D: np.ndarray,
        doc_ids: Sequence[str],
        split: str,
        cfg: MineConfig,
    ):
        self.ds, self.D, self.doc_ids, self.cfg = dataset, D, list(doc_ids), cfg
        self.doc_index = {d: i for i, d in enumerate(self.doc_ids)}
        if len(self.doc_index) != len(self.doc_ids):
            raise HardnegError("doc_ids contains duplicates")
        # labels of the mined split only: dev/test qrels never influence training data
        self.all_pos = {q: set(docs) for q, docs in dataset.split_qrels(split).items()}
        texts = (dataset.corpus[d].full_text if d in dataset.corpus else "" for d in self.doc_ids)
        self.groups = text_duplicate_groups(texts)
        members: dict[int, list[int]] = {}
        for i in np.flatnonzero(self.groups >= 0):
            members.setdefault(int(self.groups[i]), []).append(int(i))
        self.group_members = {g: np.asarray(m, np.int64) for g, m in members.items()}
        self.rng_seed = int(cfg.seed)

    # -- guards -----------------------------------------------------------------------------------------
    def guard_sets(self, qid: str) -> tuple[np.ndarray, np.ndarray]:
        """(labelled positive indices of the query in the mined split, indices sharing their text)."""
        pos = np.asarray(
            sorted(self.doc_index[d] for d in self.all_pos.get(qid, ()) if d in self.doc_index), np.int64
        )
        dup = [self.group_members[int(g)] for g in self.groups[pos] if g >= 0] if len(pos) else []
        dups = np.setdiff1d(np.concatenate(dup), pos) if dup else np.zeros(0, np.int64)
        return pos, dups

    def guard_checks(
        self, cand: np.ndarray, guard_pos: np.ndarray, dups: np.ndarray
    ) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
        s_gd = self.D[guard_pos] @ self.D[cand].T if len(guard_pos) else np.zeros((0, len(cand)), np.float32)
        checks = [
            ("labelled_positive", np.isin(cand, guard_pos)),
            ("duplicate_text", np.isin(cand, dups)),
            ("near_duplicate", near_duplicate(s_gd, self.cfg.dedup_sim)),
        ]
        return checks, s_gd

    # -- one query ----------------------------------------------------------------------------------------
    def select(
        self, qid: str, q: np.ndarray, rule_pos: np.ndarray, cand: np.ndarray, s_qd: np.ndarray
    ) -> _QueryResult:
        cfg = self.cfg
        guard_pos, dups = self.guard_sets(qid)
        checks, _ = self.guard_checks(cand, guard_pos, dups)
        s_qp = self.D[rule_pos] @ q
        code_guard = first_rejection(checks, len(cand))
        if cfg.policy in ("paper", "hybrid"):
            s_pd = self.D[rule_pos] @ self.D[cand].T
            c1, c2 = paper_conditions(1.0 - s_qd, 1.0 - s_qp, 1.0 - s_pd)
            if cfg.policy == "paper":
                checks += [("cond1_not_closer_than_positive", ~c1), ("cond2_closer_to_positive", ~c2)]
            else:
                checks += [
                    ("cond2_closer_to_positive", ~c2),
                    ("above_perc_pos", ~positive_aware_keep(s_qd, s_qp, cfg.perc_pos)),
                ]
        elif cfg.policy == "positive-aware":
            checks += [("above_perc_pos", ~positive_aware_keep(s_qd, s_qp, cfg.perc_pos))]
        elif cfg.policy == "rank-window":
            ok = np.flatnonzero(code_guard == 0)
            outside = np.ones(len(cand), bool)
            outside[ok[rank_window_keep(len(ok), cfg.rank_min, cfg.rank_max)]] = False
            checks += [("outside_rank_window", outside)]
        code = first_rejection(checks, len(cand))
        if cfg.policy == "hybrid" and cfg.dedup_negatives:
            sel = take_diverse(code, self.D[cand], cfg.n, cfg.dedup_sim, self.groups[cand])
        else:
            sel = take_top(code, cfg.n)
        eligible_unused = int((code == 0).sum()) - len(sel)
        chosen = cand[sel]
        # report cosine similarities (for bm25 the candidate scores are BM25 scores, not cosines)
        sims = s_qd[sel] if self.cfg.policy != "bm25" else (self.D[chosen] @ q).astype(np.float32)
        return _QueryResult(chosen, sims, count_codes(code, sel), len(cand), eligible_unused)

    def rescan_region(
        self, res: _QueryResult, s_qp: np.ndarray, s_qd_all: np.ndarray, k_searched: int
    ) -> tuple[float | None, float | None, int | None] | None:
        """The exact score region to re-scan when the top-K window ended before the policy's region, else None.

        paper: every D with ``sim > best positive`` (condition 1 region; all of it); positive-aware/hybrid: the
        ``k_searched`` best D with ``sim <= cap`` (NV-Retriever takes the top negatives *below* the cap, wherever they rank).
        Returns ``(lo, hi, limit)`` for :meth:`scan`.
        """
        cfg = self.cfg
        if (
            not cfg.rescan
            or len(res.selected) >= cfg.n
            or k_searched >= len(self.doc_ids)
            or len(s_qd_all) == 0
        ):
            return None
        last = float(s_qd_all[-1])
        if cfg.policy == "paper" and last > float(s_qp.max()):
            return float(s_qp.max()), None, None
        if cfg.policy in ("positive-aware", "hybrid"):
            cap = perc_pos_threshold(s_qp, cfg.perc_pos) + 1e-7
            if last > cap:
                return None, cap, k_searched
        return None

    def scan_many(
        self,
        Qr: np.ndarray,
        regions: Sequence[tuple[float | None, float | None, int | None]],
        q_batch: int = 256,
        block: int = 65536,
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Exact scan for several queries at once: per query the documents with ``lo < sim <= hi``, best first, at most
        ``limit`` (None = all). One blockwise pass over the corpus per ``q_batch`` queries (the corpus is read once
        per batch, not once per query: at 1M x 384 a per-query scan is memory-bound at ~0.1 s)."""
        nr = len(regions)
        lo = np.array([-np.inf if r[0] is None else r[0] for r in regions], np.float32)
        hi = np.array([np.inf if r[1] is None else r[1] for r in regions], np.float32)
        parts_i: list[list[np.ndarray]] = [[] for _ in range(nr)]
        parts_s: list[list[np.ndarray]] = [[] for _ in range(nr)]
        for b in range(0, nr, q_batch):
            rows = np.arange(b, min(b + q_batch, nr))
            Qb = np.ascontiguousarray(Qr[rows], dtype=np.float32)
            limited = [j for j, r in enumerate(rows) if regions[r][2] is not None]
            unlimited = [j for j, r in enumerate(rows) if regions[r][2] is None]
            L = max((int(regions[rows[j]][2]) for j in limited), default=0)
            for s in range(0, len(self.doc_ids), block):
                S = Qb @ self.D[s : s + block].T  # [batch, block]
                M = (S > lo[rows, None]) & (S <= hi[rows, None])
                if unlimited:
                    rr, cc = np.nonzero(M[unlimited])
                    for j_local, j in enumerate(unlimited):
                        sel = cc[rr == j_local]
                        parts_i[rows[j]].append(sel + s)
                        parts_s[rows[j]].append(S[j, sel])
                if limited and L > 0:
                    Sm = np.where(M[limited], S[limited], -np.inf)
                    top = (
                        np.argpartition(-Sm, L - 1, axis=1)[:, :L]
                        if Sm.shape[1] > L
                        else np.argsort(-Sm, axis=1)
                    )
                    vals = np.take_along_axis(Sm, top, axis=1)
                    for j_local, j in enumerate(limited):
                        ok = np.isfinite(vals[j_local])
                        parts_i[rows[j]].append(top[j_local][ok] + s)
                        parts_s[rows[j]].append(vals[j_local][ok])
        out = []
        for r in range(nr):
            ix = np.concatenate(parts_i[r]) if parts_i[r] else np.zeros(0, np.int64)
            sc = np.concatenate(parts_s[r]).astype(np.float32) if parts_s[r] else np.zeros(0, np.float32)
            limit = regions[r][2]
            if limit is not None and len(ix) > limit:
                top = np.argpartition(-sc, limit - 1)[:limit]
                ix, sc = ix[top], sc[top]
            order = np.lexsort((ix, -sc))
            out.append((ix[order].astype(np.int64), sc[order]))
        return out

    def random_select(self, qid: str, q: np.ndarray) -> _QueryResult:
        n_docs = len(self.doc_ids)
        guard_pos, dups = self.guard_sets(qid)
        rng = np.random.default_rng([self.rng_seed, zlib.crc32(qid.encode("utf-8"))])
        want = self.cfg.n
        m = min(n_docs, 2 * (want + len(guard_pos) + len(dups)) + 16)
        while True:
            cand = rng.choice(n_docs, size=m, replace=False) if m < n_docs else rng.permutation(n_docs)
            checks, _ = self.guard_checks(cand, guard_pos, dups)
            code = first_rejection(checks, len(cand))
            if int((code == 0).sum()) >= want or m >= n_docs:
                break
            m = min(n_docs, m * 4)
        sel = take_top(code, want)
        # count only what was looked at up to the last selected (the rest of the draw was never considered)
        upto = int(sel[-1]) + 1 if len(sel) else len(cand)
        s_qd = (self.D[cand[sel]] @ q).astype(np.float32)
        return _QueryResult(cand[sel], s_qd, count_codes(code[:upto], sel), upto, 0)


def mine_negatives(
    dataset,
    doc_vecs: np.ndarray,
    doc_ids: Sequence[str],
    query_vecs: np.ndarray,
    query_ids: Sequence[str],
    split: str,
    params: Mapping[str, Any],
    bm25_run: Mapping[str, Mapping[str, float]] | None = None,
    *,
    policy: str | None = None,
    progress: bool = False,
    **overrides: Any,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mine negatives for every (query, positive) pair of ``split``.

    Args:
        dataset: the :class:`hardneg.data.BeirDataset` (qrels of all splits are used by the guards).
        doc_vecs, doc_ids: ``[N, d]`` L2-normalised document vectors (PCA space) and their ids, same order.
        query_vecs, query_ids: ``[M, d]`` query vectors and ids (may hold more queries than the split).
        split: the qrels split whose pairs are mined (e.g. ``"train"``).
        params: full params (``load_params``); ``params['mine']`` plus ``params['data']`` (eval split names).
        bm25_run: ``{qid: {doc_id: score}}`` for ``policy="bm25"`` (computed with bm25s when ``None``).
        policy: overrides ``mine.policy``; ``**overrides`` override any other ``mine`` key (e.g. ``num_negatives=3``).
    Returns:
        ``(rows, stats)``: rows ``{query_id, positive_id, negative_ids, d_qp, d_qn, d_pn, policy}``, one per
        (query, positive), ``negative_ids`` best first (may be empty: counted in ``stats``); stats as ``mine_stats.json``.
    """
    t0 = time.perf_counter()
    cfg = MineConfig.from_params(params, policy=policy, **overrides)
    D = np.ascontiguousarray(doc_vecs, dtype=np.float32)
    Qv = np.ascontiguousarray(query_vecs, dtype=np.float32)
    if D.shape[0] != len(doc_ids) or Qv.shape[0] != len(query_ids):
        raise HardnegError(
            f"vectors and ids disagree: {D.shape[0]} doc vectors / {len(doc_ids)} ids, {Qv.shape[0]} query vectors / {len(query_ids)} ids"
        )
    if D.shape[0] == 0:
        raise HardnegError("empty corpus: nothing to mine from")
    if Qv.shape[0] and Qv.shape[1] != D.shape[1]:
        raise HardnegError(
            f"query vectors have width {Qv.shape[1]}, documents {D.shape[1]}: were they reduced together?"
        )
    _check_unit("doc_vecs", D)
    _check_unit("query_vecs", Qv)
    miner = _Miner(dataset, D, doc_ids, split, cfg)
    q_index = {q: i for i, q in enumerate(query_ids)}
    qrels = dataset.split_qrels(split)

    # the queries to mine, with their positives that have vectors
    work: list[tuple[str, int, np.ndarray, list[str]]] = []
    missing_q = missing_p = 0
    for qid in sorted(qrels):
        pos_ids = sorted(d for d in qrels[qid] if d in miner.doc_index)
        missing_p += len(qrels[qid]) - len(pos_ids)
        if qid not in q_index:
            missing_q += 1
            continue
        if not pos_ids:
            continue
        work.append((qid, q_index[qid], np.asarray([miner.doc_index[d] for d in pos_ids], np.int64), pos_ids))

    # candidates
    t_search = time.perf_counter()
    extra = max((sum(len(g) for g in miner.guard_sets(qid)) for qid, *_ in work), default=0)
    depth = max(cfg.top_k, cfg.rank_max if cfg.policy == "rank-window" else 0)
    k = min(len(doc_ids), depth + extra)
    S = Ix = None
    if cfg.policy in ("paper", "positive-aware", "hybrid", "rank-window") and work:
        from hardneg.retrieve import dense_search

        S, Ix = dense_search(
            Qv[[w[1] for w in work]], D, k, index=cfg.index, batch_size=cfg.search_batch_size
        )  # type: ignore[arg-type]
    elif cfg.policy == "bm25" and work:
        S, Ix = _bm25_candidates(dataset, miner, [w[0] for w in work], bm25_run, k)
    t_search = time.perf_counter() - t_search

    # selection
    t_sel = time.perf_counter()
    rows: list[dict[str, Any]] = []
    rejected = {r: 0 for r in RULES}
    considered = eligible_unused = rescans = q_without = q_short = 0
    d_qp_all: list[float] = []
    d_qn_all: list[float] = []
    d_pn_all: list[float] = []
    it = work
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(work, desc=f"mine {cfg.policy}", unit="q", leave=False)
    results: list[_QueryResult] = []
    pending: list[tuple[int, tuple[float | None, float | None, int | None]]] = []
    for w_i, (qid, qi, rule_pos, _) in enumerate(it):
        q = Qv[qi]
        if cfg.policy == "random":
            res = miner.random_select(qid, q)
        else:
            assert S is not None and Ix is not None
            valid = Ix[w_i] >= 0
            cand, s_qd = Ix[w_i][valid], S[w_i][valid]
            res = miner.select(qid, q, rule_pos, cand, s_qd)
            region = miner.rescan_region(res, D[rule_pos] @ q, s_qd, k)
            if region is not None:
                pending.append((w_i, region))
        results.append(res)
    if pending:  # exact re-scan of the queries whose top-K window ended before the policy's region (batched)
        scans = miner.scan_many(Qv[[work[w_i][1] for w_i, _ in pending]], [r for _, r in pending])
        for (w_i, _), (cand, s_qd) in zip(pending, scans, strict=True):
            qid, qi, rule_pos, _ = work[w_i]
            results[w_i] = miner.select(qid, Qv[qi], rule_pos, cand, s_qd)
            results[w_i].rescanned = True
        rescans = len(pending)
    for (qid, qi, rule_pos, pos_ids), res in zip(work, results, strict=True):
        q = Qv[qi]
        considered += res.considered
        eligible_unused += res.eligible_unused
        for r, c in res.counts.items():
            rejected[r] += c
        if len(res.selected) == 0:
            q_without += 1
        elif len(res.selected) < cfg.n:
            q_short += 1
        neg_ids = [doc_ids[i] for i in res.selected]
        d_qn = [round(float(1.0 - s), 6) for s in res.s_qd]
        s_pn = (
            D[rule_pos] @ D[res.selected].T if len(res.selected) else np.zeros((len(rule_pos), 0), np.float32)
        )
        s_qp = D[rule_pos] @ q
        for j, pid in enumerate(pos_ids):
            d_pn = [round(float(1.0 - s), 6) for s in s_pn[j]]
            d_qp = round(float(1.0 - s_qp[j]), 6)
            rows.append(
                {
                    "query_id": qid,
                    "positive_id": pid,
                    "negative_ids": neg_ids,
                    "d_qp": d_qp,
                    "d_qn": d_qn,
                    "d_pn": d_pn,
                    "policy": cfg.policy,
                }
            )
            d_qp_all.append(d_qp)
            d_pn_all.extend(d_pn)
        d_qn_all.extend(d_qn)
    t_sel = time.perf_counter() - t_sel

    pairs = len(rows)
    with_neg = sum(1 for r in rows if r["negative_ids"])
    stats = {
        "policy": cfg.policy,
        "split": split,
        "config": {**cfg.__dict__, "n": cfg.n},
        "n_docs": len(doc_ids),
        "candidate_depth": int(k) if cfg.policy != "random" else None,
        "queries": len(qrels),
        "queries_mined": len(work),
        "pairs": pairs,
        "pairs_with_negatives": with_neg,
        "pairs_without_negative": pairs - with_neg,
        "queries_without_negative": q_without,
        "queries_with_fewer_than_n": q_short,
        "negatives_total": len(d_qn_all),
        "negatives_per_pair": round(sum(len(r["negative_ids"]) for r in rows) / pairs, 4) if pairs else 0.0,
        "negatives_per_pair_mean": round(sum(len(r["negative_ids"]) for r in rows) / pairs, 4)
        if pairs
        else 0.0,
        "candidates_considered": considered,
        "rejected": rejected,
        "eligible_unused": eligible_unused,
        "rescans": rescans,
        "missing": {"query_vectors": missing_q, "positive_vectors": missing_p},
        "histograms": {
            "bin_edges": [round(float(b), 4) for b in HIST_BINS],
            "d_qp": np.histogram(d_qp_all, HIST_BINS)[0].tolist(),
            "d_qn": np.histogram(d_qn_all, HIST_BINS)[0].tolist(),
            "d_pn": np.histogram(d_pn_all, HIST_BINS)[0].tolist(),
        },
        "distance_means": {
            "d_qp": round(float(np.mean(d_qp_all)), 6) if d_qp_all else None,
            "d_qn": round(float(np.mean(d_qn_all)), 6) if d_qn_all else None,
            "d_pn": round(float(np.mean(d_pn_all)), 6) if d_pn_all else None,
        },
        "seconds": {
            "search": round(t_search, 3),
            "select": round(t_sel, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    }
    return rows, stats


def _bm25_candidates(
    dataset, miner: _Miner, qids: list[str], bm25_run, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """BM25 candidates as (scores, indices) arrays over ``miner.doc_ids`` (-1 padded)."""
    if bm25_run is None:
        from hardneg.retrieve import bm25_topk

        texts = [dataset.corpus[d].full_text if d in dataset.corpus else "" for d in miner.doc_ids]
        return bm25_topk(texts, [dataset.queries[q].text for q in qids], k)
    S = np.full((len(qids), k), -np.inf, np.float32)
    Ix = np.full((len(qids), k), -1, np.int64)
    for r, qid in enumerate(qids):
        hits = sorted(
            (
                (float(s), miner.doc_index[d])
                for d, s in (bm25_run.get(qid) or {}).items()
                if d in miner.doc_index
            ),
            key=lambda x: (-x[0], x[1]),
        )[:k]
        for c, (s, i) in enumerate(hits):
            S[r, c], Ix[r, c] = s, i
    return S, Ix


# ------------------------------------------------------------------------------------------------------ outputs


def write_outputs(
    out_dir: str | os.PathLike,
    rows: list[dict[str, Any]],
    stats: dict[str, Any],
    params: Mapping[str, Any],
    inputs: Mapping[str, str] | None = None,
) -> Path:
    """``negatives.jsonl``, ``mine_stats.json`` and ``lineage.json`` (params hash of embed/reduce/mine, model
    fingerprints and corpus hash in ``inputs``, plus the sha256 of negatives.jsonl), published with checksums."""
    from hardneg.artifacts import atomic_write_json, atomic_write_jsonl, staged_output
    from hardneg.config import params_hash
    from hardneg.lineage import current_lineage, sha256_file, write_lineage

    with staged_output(out_dir, "hardneg mine") as out:
        neg = out / NEGATIVES_FILE
        atomic_write_jsonl(neg, rows)
        atomic_write_json(out / STATS_FILE, stats)
        lin = current_lineage(None)
        lin.params_hash = params_hash(dict(params), ["embed", "reduce", "mine"])
        lin = lin.derive(**dict(inputs or {}), negatives_sha256=sha256_file(neg))
        lin.extra = {"policy": stats.get("policy"), "split": stats.get("split"), "pairs": stats.get("pairs")}
        write_lineage(out, lin)
    return Path(out_dir) / NEGATIVES_FILE


def read_negatives(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a ``negatives.jsonl`` (a folder is accepted too); the folder's checksums are verified first."""
    from hardneg.train import load_negatives

    return load_negatives(path)
