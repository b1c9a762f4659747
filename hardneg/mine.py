"""Hard-negative selection policies (arXiv 2505.18366 and baselines), with false-negative and leakage guards.

Distances are cosine distances ``d = 1 - cos`` between L2-normalised vectors (in the PCA space of ``hardneg
reduce``). Candidates come from an exact faiss top-K search per query (``mine.top_k``).

Policies (``mine.policy``):

- ``paper`` (arXiv 2505.18366): keep D if ``d(Q,D) < d(Q,P)`` (condition 1) and ``d(Q,D) < d(P,D)`` (condition 2);
  the primary negative is the qualifying D with the smallest ``d(Q,D)`` (``paper_num_negatives``, default 1).
  *Several positives* (``mine.positive_reading``): ``per-pair`` (default) reads the rule per (Q, P) pair, as the
  paper states it: each pair gets its own negatives, checked against that pair's P only. ``all-positives``
  (stricter): D must satisfy both conditions against **each** positive of the query in the mined split (closer to Q
  than the closest positive, and closer to Q than to any positive), and every (Q, P) row of that query gets the same
  negatives; at ~43 positives per query it left 72% of the queries of a public BEIR set without a negative. The same
  reading applies to ``positive-aware`` and ``hybrid`` (cap and condition 2 against the pair's P, or every P). In
  both readings no labelled positive of the query is ever a negative. ``mine_stats.json`` ``readings`` counts pairs
  with a negative and queries without one for *both* readings (the unused one on the same candidates), and a warning
  names the setting when most queries get none. Selection is vectorised over (units x candidates) per query, a
  unit being a pair (per-pair) or the query (all-positives).
  *Top-K vs the paper's full scan*: every D meeting condition 1 scores above the unit's positive
  (all-positives: the best one), so the top-K list holds all of them whenever it reaches that score; otherwise, when fewer
  than n negatives were found, that unit's condition-1 region is re-scanned exactly over the whole corpus
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

from hardneg import settings as _settings
from hardneg.artifacts import NEGATIVES_FILE
from hardneg.errors import HardnegError
from hardneg.hw import blas_single_thread

log = logging.getLogger(__name__)

Policy = Literal["paper", "positive-aware", "hybrid", "rank-window", "random", "bm25"]
POLICIES = _settings.MINE_POLICIES
# how a rule that compares a candidate with "the positive" reads when a query has several positives
Reading = Literal["per-pair", "all-positives"]
READINGS = _settings.MINE_READINGS
READING_POLICIES: tuple[str, ...] = ("paper", "positive-aware", "hybrid")  # the policies whose rules use P

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
_HIDDEN = (
    len(RULES) + 1
)  # code of a candidate outside a unit's candidate window: neither considered nor counted
STATS_FILE = "mine_stats.json"
HIST_BINS = np.linspace(0.0, 2.0, 41)  # cosine distance range [0, 2], 0.05 wide


# ------------------------------------------------------------------------------------------ pure selection rules


def pair_conditions(d_qd: np.ndarray, d_qp: np.ndarray, d_pd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's two conditions for each (query, positive) pair (the ``per-pair`` reading).

    Args:
        d_qd: ``[K]`` d(Q, D) of the candidates.
        d_qp: ``[P]`` d(Q, P) of the query's positives.
        d_pd: ``[P, K]`` d(P, D).
    Returns:
        ``(cond1, cond2)`` boolean ``[P, K]``: cond1 = ``d(Q,D) < d(Q,P)``; cond2 = ``d(Q,D) < d(P,D)``.
    """
    d_qd = np.asarray(d_qd, np.float64)
    d_qp = np.atleast_1d(np.asarray(d_qp, np.float64))
    d_pd = np.asarray(d_pd, np.float64).reshape(len(d_qp), len(d_qd))
    return d_qd[None, :] < d_qp[:, None], d_qd[None, :] < d_pd


def paper_conditions(d_qd: np.ndarray, d_qp: np.ndarray, d_pd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The paper's two conditions against **every** positive (the ``all-positives`` reading).

    Same arguments as :func:`pair_conditions`. Returns ``(cond1, cond2)`` boolean ``[K]``: cond1 = ``d(Q,D) < d(Q,P)``
    for all P; cond2 = ``d(Q,D) < d(P,D)`` for all P (both True when there is no positive).
    """
    c1, c2 = pair_conditions(d_qd, d_qp, d_pd)
    return c1.all(axis=0), c2.all(axis=0)


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


def positive_aware_keep_pairs(s_qd: np.ndarray, s_qp: np.ndarray, perc_pos: float) -> np.ndarray:
    """``[P, K]``: :func:`positive_aware_keep` against each positive on its own (the ``per-pair`` reading). The cap is
    monotone in sim(Q,P), so the ``all-positives`` reading (least similar positive) is the AND over the rows."""
    s = np.atleast_1d(np.asarray(s_qp, np.float64))
    cap = s - (1.0 - float(perc_pos)) * np.abs(s)
    return np.asarray(s_qd, np.float64)[None, :] <= cap[:, None] + 1e-7


def policy_rule_checks(
    policy: str, reading: str, s_qd: np.ndarray, s_qp: np.ndarray, s_pd: np.ndarray | None, perc_pos: float
) -> list[tuple[str, np.ndarray]]:
    """The policy's own rules as ``(rule, reject_mask)`` with masks ``[U, K]``: one row per positive (``per-pair``) or
    one row against every positive (``all-positives``). Empty for policies without positive-dependent rules."""
    keep: list[tuple[str, np.ndarray]] = []
    if policy in ("paper", "hybrid"):
        assert s_pd is not None
        c1, c2 = pair_conditions(1.0 - s_qd, 1.0 - s_qp, 1.0 - s_pd)
        if policy == "paper":
            keep.append(("cond1_not_closer_than_positive", c1))
        keep.append(("cond2_closer_to_positive", c2))
    if policy in ("positive-aware", "hybrid"):
        keep.append(("above_perc_pos", positive_aware_keep_pairs(s_qd, s_qp, perc_pos)))
    if reading == "all-positives":
        return [(r, ~m.all(axis=0, keepdims=True)) for r, m in keep]
    return [(r, ~m) for r, m in keep]


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


def first_rejection(checks: Sequence[tuple[str, np.ndarray]], k: int | tuple[int, ...]) -> np.ndarray:
    """``[k]`` (or shape ``k``, e.g. ``(units, candidates)``) int codes: 0 = passed every check, else the code
    (``RULES`` index + 1) of the first failed check.

    ``checks`` are ``(rule, reject_mask)`` in priority order; masks broadcast to the shape (``[K]`` guards apply to
    every row).
    """
    code = np.zeros(k, np.int16)
    for rule, rej in checks:
        code[(code == 0) & np.broadcast_to(np.asarray(rej, bool), code.shape)] = _RULE_CODE[rule]
    return code


def take_top(code: np.ndarray, n: int) -> np.ndarray:
    """Positions of the first ``n`` candidates with code 0 (candidates are ordered best first)."""
    return np.flatnonzero(code == 0)[: max(0, int(n))]


def take_top_rows(code: np.ndarray, n: int) -> list[np.ndarray]:
    """:func:`take_top` for every row of a ``[U, K]`` code matrix at once."""
    ok = code == 0
    take = ok & (np.cumsum(ok, axis=1) <= max(0, int(n)))
    rows, cols = np.nonzero(take)
    return np.split(cols.astype(np.int64), np.cumsum(np.bincount(rows, minlength=code.shape[0]))[:-1])


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


def take_diverse_rows(
    code: np.ndarray, cand_vecs: np.ndarray, n: int, dup_sim: float, text_groups: np.ndarray | None = None
) -> list[np.ndarray]:
    """:func:`take_diverse` for every row of a ``[U, K]`` code matrix (in place). The duplicate relation is computed
    once per query over the first eligible candidates (each row's greedy pass rarely looks further); a row that
    needs more falls back to :func:`take_diverse`."""
    elig = code == 0
    head = np.flatnonzero(elig.any(axis=0))[: 4 * int(n) + 32]
    V = cand_vecs[head]
    dup = (V @ V.T) >= dup_sim - 1e-7
    if text_groups is not None:
        g = text_groups[head]
        dup |= (g[:, None] == g[None, :]) & (g[:, None] >= 0)
    neighbours = [set(np.flatnonzero(r).tolist()) for r in dup]
    mark = _RULE_CODE["duplicate_of_negative"]
    out: list[np.ndarray] = []
    for u in range(code.shape[0]):
        local = np.flatnonzero(elig[u, head]).tolist()
        taken: list[int] = []
        blocked: set[int] = set()
        for j in local:
            if len(taken) >= n:
                break
            if j in blocked:
                code[u, head[j]] = mark
                continue
            taken.append(j)
            blocked |= neighbours[j]
        if len(taken) < n and int(elig[u].sum()) > len(local):
            out.append(take_diverse(code[u], cand_vecs, n, dup_sim, text_groups))
        else:
            out.append(head[taken].astype(np.int64))
    return out


def count_codes(code: np.ndarray, selected: np.ndarray | None = None) -> dict[str, int]:
    """Per-rule rejected counts (selected and unused eligible positions have code 0; ``_HIDDEN`` is not counted)."""
    counts = np.bincount(code.ravel().astype(np.int64), minlength=len(RULES) + 2)
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


MineConfig = _settings.MineConfig  # typed mine section (hardneg.settings)


# -------------------------------------------------------------------------------------------------- the miner


@dataclass
class _QueryResult:
    """One query's selection. A *unit* is what gets its own negatives: one per positive (``per-pair``) or one for
    the whole query (``all-positives``, and policies whose rules do not use the positive)."""

    selected: list[np.ndarray]  # per unit: doc indices, best first
    s_qd: list[np.ndarray]  # per unit: sims Q-D of the selected
    counts: dict[str, int]
    considered: int
    eligible_unused: int
    other_eligible: np.ndarray  # [U'] eligible candidates per unit of the other reading (for its statistics)
    rescanned: bool = False


@dataclass
class _Window:
    """Where a re-scanned query's merged candidate list came from (each unit keeps its own candidate window)."""

    in_first: np.ndarray  # [K] bool: the candidate was in the faiss top-K window
    rescanned: dict[str, np.ndarray]  # reading -> [U] bool: the unit asked for the re-scan
    k: int  # depth of the top-K search (the limit of a positive-aware / hybrid re-scan)


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
        self, cand: np.ndarray, guard_pos: np.ndarray, dups: np.ndarray, s_gd: np.ndarray | None = None
    ) -> list[tuple[str, np.ndarray]]:
        """The guards as ``(rule, reject_mask [K])``; ``s_gd`` = ``[len(guard_pos), K]`` sims if already computed."""
        if s_gd is None:
            s_gd = (
                self.D[guard_pos] @ self.D[cand].T if len(guard_pos) else np.zeros((0, len(cand)), np.float32)
            )
        return [
            ("labelled_positive", np.isin(cand, guard_pos)),
            ("duplicate_text", np.isin(cand, dups)),
            ("near_duplicate", near_duplicate(s_gd, self.cfg.dedup_sim)),
        ]

    # -- units, windows and re-scans -------------------------------------------------------------------------
    def other_reading(self) -> str:
        return READINGS[1 - READINGS.index(self.cfg.positive_reading)]

    def units(self, reading: str, n_pos: int) -> int:
        return n_pos if reading == "per-pair" and self.cfg.policy in READING_POLICIES else 1

    def thresholds(self, reading: str, s_qp: np.ndarray) -> np.ndarray:
        """``[U]`` the sim each unit's region is bounded by: paper, sim(Q,P) (condition 1 keeps only D above it;
        all-positives: the best positive); positive-aware/hybrid, the cap (all-positives: the least similar P's)."""
        s = np.asarray(s_qp, np.float64)
        if self.cfg.policy == "paper":
            return s if self.units(reading, len(s)) > 1 else np.array([s.max()])
        cap = s - (1.0 - float(self.cfg.perc_pos)) * np.abs(s) + 1e-7
        return cap if self.units(reading, len(s)) > 1 else np.array([cap.min()])

    def visible(self, reading: str, s_qd: np.ndarray, s_qp: np.ndarray, window: _Window) -> np.ndarray:
        """``[U, K]`` the candidates inside each unit's window after a re-scan. paper: all (its region is exact).
        positive-aware/hybrid: the faiss top-K window, or, for a unit that asked for the re-scan, the top-K below
        its cap (the NV-Retriever definition)."""
        n_units = self.units(reading, len(s_qp))
        if self.cfg.policy not in ("positive-aware", "hybrid"):
            return np.ones((n_units, len(s_qd)), bool)
        below = np.asarray(s_qd, np.float64)[None, :] <= self.thresholds(reading, s_qp)[:, None]
        region = below & (np.cumsum(below, axis=1) <= window.k)
        return np.where(window.rescanned[reading][:, None], region, window.in_first[None, :])

    def rescan_regions(
        self, res: _QueryResult, s_qp: np.ndarray, s_qd_all: np.ndarray, k_searched: int
    ) -> tuple[list[tuple[float | None, float | None, int | None]], dict[str, np.ndarray]]:
        """The exact score regions to re-scan (for :meth:`scan_many`) when the top-K window ended before a unit's
        region, and per reading which units asked. A unit of the configured reading asks when it got fewer than n
        negatives, one of the other reading when it got none (its statistics). paper: every D with ``sim >`` the
        lowest asking threshold (all of it); positive-aware/hybrid: the ``k_searched`` best D below each asking cap."""
        cfg = self.cfg
        if (
            not cfg.rescan
            or cfg.policy not in READING_POLICIES
            or k_searched >= len(self.doc_ids)
            or len(s_qd_all) == 0
        ):
            return [], {}
        last = float(s_qd_all[-1])
        short = {
            cfg.positive_reading: np.array([len(x) for x in res.selected]) < cfg.n,
            self.other_reading(): res.other_eligible == 0,
        }
        need = {r: m & (last > self.thresholds(r, s_qp)) for r, m in short.items()}
        thr = np.concatenate([self.thresholds(r, s_qp)[m] for r, m in need.items()])
        if not len(thr):
            return [], {}
        if cfg.policy == "paper":
            return [(float(thr.min()), None, None)], need
        return [(None, float(c), k_searched) for c in np.unique(thr)], need

    # -- one query ----------------------------------------------------------------------------------------
    def select(
        self,
        qid: str,
        q: np.ndarray,
        rule_pos: np.ndarray,
        cand: np.ndarray,
        s_qd: np.ndarray,
        window: _Window | None = None,
    ) -> _QueryResult:
        """One query over its candidates ``cand`` (best first, sims ``s_qd``): the configured reading's negatives per
        unit, vectorised over units x candidates, and the other reading's eligible counts."""
        cfg = self.cfg
        guard_pos, dups = self.guard_sets(qid)
        Dc = self.D[cand]
        s_pc = self.D[rule_pos] @ Dc.T  # [P, K]
        same = len(guard_pos) == len(rule_pos) and np.array_equal(np.sort(rule_pos), guard_pos)
        s_gd = s_pc[np.argsort(rule_pos)] if same else None
        guards = self.guard_checks(cand, guard_pos, dups, s_gd)
        if cfg.policy == "rank-window":
            ok = np.flatnonzero(first_rejection(guards, len(cand)) == 0)
            outside = np.ones(len(cand), bool)
            outside[ok[rank_window_keep(len(ok), cfg.rank_min, cfg.rank_max)]] = False
            guards.append(("outside_rank_window", outside))
        s_qp = self.D[rule_pos] @ q
        readings = (cfg.positive_reading, self.other_reading())
        codes: dict[str, np.ndarray] = {}
        for reading in readings if cfg.policy in READING_POLICIES else readings[:1]:
            checks = guards + policy_rule_checks(cfg.policy, reading, s_qd, s_qp, s_pc, cfg.perc_pos)
            code = first_rejection(checks, (self.units(reading, len(rule_pos)), len(cand)))
            if window is not None:
                code[~self.visible(reading, s_qd, s_qp, window)] = _HIDDEN
            codes[reading] = code
        code = codes[cfg.positive_reading]
        other_eligible = (codes.get(readings[1], code) == 0).sum(axis=1)
        if cfg.policy == "hybrid" and cfg.dedup_negatives:
            sel = take_diverse_rows(code, Dc, cfg.n, cfg.dedup_sim, self.groups[cand])
        else:
            sel = take_top_rows(code, cfg.n)
        # report cosine similarities (for bm25 the candidate scores are BM25 scores, not cosines)
        sims = [s_qd[x] if cfg.policy != "bm25" else (Dc[x] @ q).astype(np.float32) for x in sel]
        eligible_unused = int((code == 0).sum()) - sum(len(x) for x in sel)
        considered = int((code != _HIDDEN).sum())
        return _QueryResult(
            [cand[x] for x in sel], sims, count_codes(code), considered, eligible_unused, other_eligible
        )

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
                    rr, cc = np.nonzero(M[unlimited])  # row-major: rr is sorted
                    bounds = np.searchsorted(rr, np.arange(len(unlimited) + 1))
                    for j_local, j in enumerate(unlimited):
                        sel = cc[bounds[j_local] : bounds[j_local + 1]]
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
            checks = self.guard_checks(cand, guard_pos, dups)
            code = first_rejection(checks, len(cand))
            if int((code == 0).sum()) >= want or m >= n_docs:
                break
            m = min(n_docs, m * 4)
        sel = take_top(code, want)
        # count only what was looked at up to the last selected (the rest of the draw was never considered)
        upto = int(sel[-1]) + 1 if len(sel) else len(cand)
        s_qd = (self.D[cand[sel]] @ q).astype(np.float32)
        return _QueryResult([cand[sel]], [s_qd], count_codes(code[:upto]), upto, 0, np.array([len(sel)]))


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
        dataset: the :class:`hardneg.data.BeirDataset` (only the qrels of ``split`` are read, positives = score >= 1).
        doc_vecs, doc_ids: ``[N, d]`` L2-normalised document vectors (PCA space) and their ids, same order.
        query_vecs, query_ids: ``[M, d]`` query vectors and ids (may hold more queries than the split).
        split: the qrels split whose pairs are mined (e.g. ``"train"``).
        params: full params (``load_params``) or a bare ``mine`` section.
        bm25_run: ``{qid: {doc_id: score}}`` for ``policy="bm25"`` (computed with bm25s when ``None``).
        policy: overrides ``mine.policy``; ``**overrides`` override any other ``mine`` key (e.g. ``num_negatives=3``,
            ``positive_reading="all-positives"``).
        progress: a progress bar over the queries (tqdm, like ``hardneg embed``).
    Returns:
        ``(rows, stats)``: rows ``{query_id, positive_id, negative_ids, d_qp, d_qn, d_pn, policy}``, one per
        (query, positive), ``negative_ids`` best first (may be empty: counted in ``stats``); stats as ``mine_stats.json``
        (``readings`` holds the pair / query counts of both ``mine.positive_reading`` values).
    """
    t0 = time.perf_counter()
    cfg = MineConfig.from_params(params, policy=policy, **overrides)
    D, Qv = _checked_inputs(doc_vecs, doc_ids, query_vecs, query_ids)
    miner = _Miner(dataset, D, doc_ids, split, cfg)
    qrels = dataset.split_qrels(split)
    work, missing = _work_items(qrels, miner, query_ids)
    t_search = time.perf_counter()
    S, Ix, k = _candidates(dataset, miner, Qv, work, bm25_run)
    t_search = time.perf_counter() - t_search
    t_sel = time.perf_counter()
    log.info(
        "mine %s (%s): %d queries, %d pairs, %d candidates each",
        cfg.policy,
        cfg.positive_reading,
        len(work),
        sum(len(w[3]) for w in work),
        k,
    )
    results, rescans = _select_all(miner, Qv, work, S, Ix, k, progress)
    with blas_single_thread():
        rows, dists = _rows(miner, Qv, work, results)
    t_sel = time.perf_counter() - t_sel
    stats = _stats(cfg, split, len(doc_ids), len(qrels), work, results, rows, dists)
    stats.update(
        candidate_depth=int(k) if cfg.policy != "random" else None,
        rescans=rescans,
        missing=missing,
        seconds={
            "search": round(t_search, 3),
            "select": round(t_sel, 3),
            "total": round(time.perf_counter() - t0, 3),
        },
    )
    warn_if_few_negatives(stats)
    return rows, stats


def warn_if_few_negatives(stats: Mapping[str, Any], share: float = 0.5) -> bool:
    """``logging.warning`` naming the setting to change when more than ``share`` of the mined queries got no negative
    (returns whether it warned)."""
    mined = int(stats.get("queries_mined") or 0)
    without = int(stats.get("queries_without_negative") or 0)
    if not mined or without <= share * mined:
        return False
    if stats.get("positive_reading") == "all-positives" and stats.get("policy") in READING_POLICIES:
        per_pair = (stats.get("readings") or {}).get("per-pair") or {}
        hint = (
            "set mine.positive_reading: per-pair (each (query, positive) pair gets negatives that satisfy the rule "
            f"against its own positive; that reading leaves {per_pair.get('queries_without_negative', '?')} "
            "queries without one)"
        )
    elif stats.get("policy") == "paper":
        hint = (
            "the paper's rule keeps only documents ranked above the positive: use mine.policy: hybrid or "
            "positive-aware, or raise mine.paper_num_negatives / mine.top_k with mine.rescan: true"
        )
    else:
        hint = "raise mine.top_k (with mine.rescan: true), lower mine.dedup_sim, or change mine.policy"
    log.warning(
        "mine: %d of %d training queries (%.0f%%) got no negative (mine.policy=%s, mine.positive_reading=%s): %s",
        without,
        mined,
        100.0 * without / mined,
        stats.get("policy"),
        stats.get("positive_reading"),
        hint,
    )
    return True


def _checked_inputs(
    doc_vecs: np.ndarray, doc_ids: Sequence[str], query_vecs: np.ndarray, query_ids: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
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
    return D, Qv


_Work = list[tuple[str, int, np.ndarray, list[str]]]  # (qid, query row, positive doc indices, positive ids)


def _work_items(qrels: Mapping[str, Mapping[str, int]], miner: _Miner, query_ids: Sequence[str]):
    """The queries to mine with their positives (score >= 1, with vectors), and what was missing."""
    q_index = {q: i for i, q in enumerate(query_ids)}
    work: _Work = []
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
    return work, {"query_vectors": missing_q, "positive_vectors": missing_p}


def _candidates(dataset, miner: _Miner, Qv: np.ndarray, work: _Work, bm25_run) -> tuple[Any, Any, int]:
    """Top-k candidates of every work query (faiss, or BM25), k = ``top_k`` + the largest guard set."""
    cfg = miner.cfg
    extra = max((sum(len(g) for g in miner.guard_sets(qid)) for qid, *_ in work), default=0)
    depth = max(cfg.top_k, cfg.rank_max if cfg.policy == "rank-window" else 0)
    k = min(len(miner.doc_ids), depth + extra)
    S = Ix = None
    if cfg.policy in ("paper", "positive-aware", "hybrid", "rank-window") and work:
        from hardneg.retrieve import dense_search

        S, Ix = dense_search(
            Qv[[w[1] for w in work]], miner.D, k, index=cfg.index, batch_size=cfg.search_batch_size
        )  # type: ignore[arg-type]
    elif cfg.policy == "bm25" and work:
        S, Ix = _bm25_candidates(dataset, miner, [w[0] for w in work], bm25_run, k)
    return S, Ix, k


def _select_all(
    miner: _Miner, Qv: np.ndarray, work: _Work, S: Any, Ix: Any, k: int, progress: bool
) -> tuple[list[_QueryResult], int]:
    """Select for every work query (progress bar over queries), then re-scan the queries that need it (batched)."""
    from tqdm.auto import tqdm

    cfg = miner.cfg
    results: list[_QueryResult] = []
    pending: list[tuple[int, list, dict[str, np.ndarray]]] = []
    bar = tqdm(
        work,
        desc=f"mine {cfg.policy} ({cfg.positive_reading})",
        unit="q",
        disable=not progress,
        dynamic_ncols=True,
        leave=False,
    )
    with blas_single_thread():  # many small matmuls: threads only add synchronisation
        for w_i, (qid, qi, rule_pos, _) in enumerate(bar):
            q = Qv[qi]
            if cfg.policy == "random":
                results.append(miner.random_select(qid, q))
                continue
            valid = Ix[w_i] >= 0
            cand, s_qd = Ix[w_i][valid], S[w_i][valid]
            res = miner.select(qid, q, rule_pos, cand, s_qd)
            regions, need = miner.rescan_regions(res, miner.D[rule_pos] @ q, s_qd, k)
            if regions:
                pending.append((w_i, regions, need))
            results.append(res)
    if pending:
        _rescan(miner, Qv, work, S, Ix, k, pending, results)
    return results, len(pending)


def _rescan(miner: _Miner, Qv, work: _Work, S, Ix, k: int, pending, results: list[_QueryResult]) -> None:
    """Exact re-scan of the queries whose top-K window ended before a unit's region (one batched pass), merged with
    their top-K window, then selected again (``results`` updated in place)."""
    owners = [w_i for w_i, regions, _ in pending for _ in regions]
    flat = [r for _, regions, _ in pending for r in regions]
    log.info("mine: exact re-scan of %d queries (%d score regions)", len(pending), len(flat))
    scans = miner.scan_many(Qv[[work[w][1] for w in owners]], flat)
    by_query: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for w_i, scan in zip(owners, scans, strict=True):
        by_query.setdefault(w_i, []).append(scan)
    with blas_single_thread():
        for w_i, _, need in pending:
            _reselect(miner, Qv, work, S, Ix, k, w_i, need, by_query[w_i], results)


def _reselect(miner: _Miner, Qv, work: _Work, S, Ix, k: int, w_i: int, need, scans, results) -> None:
    """Select one re-scanned query again over its re-scan regions merged with its top-K window."""
    qid, qi, rule_pos, _ = work[w_i]
    valid = Ix[w_i] >= 0
    first = Ix[w_i][valid]
    parts = [*scans, (first, S[w_i][valid])]
    ix, keep = np.unique(np.concatenate([p[0] for p in parts]), return_index=True)  # re-scan scores first
    sc = np.concatenate([p[1] for p in parts]).astype(np.float32)[keep]
    order = np.lexsort((ix, -sc))
    cand, s_qd = ix[order].astype(np.int64), sc[order]
    res = miner.select(qid, Qv[qi], rule_pos, cand, s_qd, _Window(np.isin(cand, first), need, k))
    res.rescanned = True
    results[w_i] = res


def _rows(
    miner: _Miner, Qv: np.ndarray, work: _Work, results: list[_QueryResult]
) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """One output row per (query, positive), with its unit's negatives and distances."""
    D, policy = miner.D, miner.cfg.policy
    rows: list[dict[str, Any]] = []
    dists: dict[str, list[float]] = {"d_qp": [], "d_qn": [], "d_pn": []}
    for (qid, qi, rule_pos, pos_ids), res in zip(work, results, strict=True):
        s_qp = D[rule_pos] @ Qv[qi]
        shared = len(res.selected) == 1
        for j, pid in enumerate(pos_ids):
            u = 0 if shared else j
            negs = res.selected[u]
            d_qn = [round(float(1.0 - s), 6) for s in res.s_qd[u]]
            d_pn = [round(float(1.0 - s), 6) for s in (D[negs] @ D[rule_pos[j]])] if len(negs) else []
            d_qp = round(float(1.0 - s_qp[j]), 6)
            rows.append(
                {
                    "query_id": qid,
                    "positive_id": pid,
                    "negative_ids": [miner.doc_ids[i] for i in negs],
                    "d_qp": d_qp,
                    "d_qn": d_qn,
                    "d_pn": d_pn,
                    "policy": policy,
                }
            )
            dists["d_qp"].append(d_qp)
            dists["d_pn"].extend(d_pn)
            if not shared or j == 0:
                dists["d_qn"].extend(d_qn)
    return rows, dists


def reading_stats(work: _Work, results: list[_QueryResult], used: str) -> dict[str, dict[str, int]]:
    """Pairs, pairs with / without a negative and queries without one, for both ``mine.positive_reading`` values
    (the configured one from the selection, the other from its eligible counts on the same candidates)."""
    out: dict[str, dict[str, int]] = {}
    for reading in READINGS:
        pairs = with_neg = q_without = 0
        for (*_, pos_ids), res in zip(work, results, strict=True):
            if reading == used:
                has = np.array([len(x) > 0 for x in res.selected])
            else:
                has = np.asarray(res.other_eligible) > 0
            n = int(has.sum()) * (len(pos_ids) if len(has) == 1 else 1)
            pairs += len(pos_ids)
            with_neg += n
            q_without += n == 0
        out[reading] = {
            "pairs": pairs,
            "pairs_with_negative": with_neg,
            "pairs_without_negative": pairs - with_neg,
            "queries_without_negative": q_without,
        }
    return out


def _stats(
    cfg: MineConfig,
    split: str,
    n_docs: int,
    n_queries: int,
    work: _Work,
    results: list[_QueryResult],
    rows: list[dict[str, Any]],
    dists: dict[str, list[float]],
) -> dict[str, Any]:
    """``mine_stats.json`` (less timings, depth, re-scans and missing vectors, which the caller adds)."""
    rejected = {r: 0 for r in RULES}
    for res in results:
        for r, c in res.counts.items():
            rejected[r] += c
    readings = reading_stats(work, results, cfg.positive_reading)
    pairs = len(rows)
    with_neg = sum(1 for r in rows if r["negative_ids"])
    n_negs = sum(len(r["negative_ids"]) for r in rows)
    q_short = sum(
        1
        for res in results
        if any(len(x) for x in res.selected) and min(len(x) for x in res.selected) < cfg.n
    )
    return {
        "policy": cfg.policy,
        "positive_reading": cfg.positive_reading,
        "split": split,
        "config": {**cfg.__dict__, "n": cfg.n},
        "n_docs": n_docs,
        "queries": n_queries,
        "queries_mined": len(work),
        "pairs": pairs,
        "pairs_with_negatives": with_neg,
        "pairs_without_negative": pairs - with_neg,
        "queries_without_negative": readings[cfg.positive_reading]["queries_without_negative"],
        "queries_with_fewer_than_n": q_short,
        "readings": readings,
        "negatives_total": len(dists["d_qn"]),
        "negatives_per_pair": round(n_negs / pairs, 4) if pairs else 0.0,
        "negatives_per_pair_mean": round(n_negs / pairs, 4) if pairs else 0.0,
        "candidates_considered": sum(res.considered for res in results),
        "rejected": rejected,
        "eligible_unused": sum(res.eligible_unused for res in results),
        "histograms": {
            "bin_edges": [round(float(b), 4) for b in HIST_BINS],
            **{key: np.histogram(v, HIST_BINS)[0].tolist() for key, v in dists.items()},
        },
        "distance_means": {key: round(float(np.mean(v)), 6) if v else None for key, v in dists.items()},
    }


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
