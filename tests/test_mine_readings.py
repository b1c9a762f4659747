"""``mine.positive_reading`` (per-pair | all-positives): the vectorised selection equals a brute-force reading of the
rule on random vectors, per-pair yields far more pairs with a negative when queries have many positives, both
readings' counts are reported, a warning names the setting when most queries get none; graded qrels (0 = judged
non-relevant) in mining, training and evaluation."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardneg.data import BeirDataset, Document, Query
from hardneg.errors import ConfigError
from hardneg.mine import READINGS, MineConfig, mine_negatives, warn_if_few_negatives

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _dataset(n_docs: int, qrels: dict[str, dict[str, int]]) -> BeirDataset:
    return BeirDataset(
        root=Path("."),
        corpus={f"d{i}": Document(f"d{i}", f"document number {i}") for i in range(n_docs)},
        queries={q: Query(q, f"query {q}") for q in qrels},
        qrels={"train": qrels},
    )


def random_case(seed: int, n_docs: int = 80, n_queries: int = 6, dim: int = 6, max_pos: int = 6):
    """Random unit vectors; each query has 1..max_pos positives near it (so candidates beat some, not all)."""
    rng = np.random.default_rng(seed)
    D = _unit_rows(rng.standard_normal((n_docs, dim)))
    Q = _unit_rows(D[rng.choice(n_docs, n_queries)] + 0.7 * rng.standard_normal((n_queries, dim)))
    qrels = {}
    for i in range(n_queries):
        near = np.argsort(-(D @ Q[i]))[:20]
        pos = rng.choice(near, size=int(rng.integers(1, max_pos + 1)), replace=False)
        qrels[f"q{i}"] = {f"d{j}": 1 for j in pos}
    return _dataset(n_docs, qrels), D, [f"d{i}" for i in range(n_docs)], Q, list(qrels)


def many_positives_case(
    n_pos: int = 30, n_queries: int = 12, per_topic: int = 45, dim: int = 24, seed: int = 0
):
    """Topic clusters; each query's ``n_pos`` positives are random members of its topic (NFCorpus-like)."""
    rng = np.random.default_rng(seed)
    n_docs = n_queries * per_topic
    C = _unit_rows(rng.standard_normal((n_queries, dim)))
    topic = np.arange(n_docs) % n_queries
    D = _unit_rows(C[topic] + rng.standard_normal((n_docs, dim)) / np.sqrt(dim))
    Q = _unit_rows(C + 0.8 * rng.standard_normal((n_queries, dim)) / np.sqrt(dim))
    qrels = {
        f"q{t}": {f"d{j}": 1 for j in rng.choice(np.flatnonzero(topic == t), n_pos, replace=False)}
        for t in range(n_queries)
    }
    return _dataset(n_docs, qrels), D, [f"d{i}" for i in range(n_docs)], Q, list(qrels)


def brute_force(
    policy: str, reading: str, D, Q, qids, qrels, n: int, perc_pos=0.95, dup_sim=None, guard_sim=0.9999
):
    """The rule read straight from its definition, one (query, positive) pair at a time, over the whole corpus, in
    float64: ``{(qid, positive_id): [negative ids]}``. Guards (both readings): other positives of the query are never
    negatives, nor a near-duplicate (cos >= ``guard_sim``) of any of them; ``dup_sim``: greedy skipping of chosen
    negatives' near-duplicates (hybrid)."""
    D64, out = D.astype(np.float64), {}
    for qi, qid in enumerate(qids):
        q = Q[qi].astype(np.float64)
        pos = sorted(int(d[1:]) for d in qrels[qid])
        for p in pos:
            against = pos if reading == "all-positives" else [p]
            keep = []
            for c in range(len(D)):
                if c in pos or any(D64[c] @ D64[a] >= guard_sim - 1e-7 for a in pos):
                    continue
                s_qd, ok = D64[c] @ q, True
                for a in against:
                    s_qp, s_pd = D64[a] @ q, D64[a] @ D64[c]
                    if policy == "paper":
                        ok &= (1 - s_qd < 1 - s_qp) and (1 - s_qd < 1 - s_pd)
                    if policy == "hybrid":
                        ok &= 1 - s_qd < 1 - s_pd
                    if policy in ("hybrid", "positive-aware"):
                        ok &= s_qd <= s_qp - (1 - perc_pos) * abs(s_qp) + 1e-7
                if ok:
                    keep.append((-s_qd, c))
            chosen: list[int] = []
            for _, c in sorted(keep):
                if len(chosen) == n:
                    break
                if dup_sim is not None and any(D64[c] @ D64[t] >= dup_sim - 1e-7 for t in chosen):
                    continue
                chosen.append(c)
            out[(qid, f"d{p}")] = [f"d{c}" for c in chosen]
    return out


@pytest.mark.parametrize("reading", READINGS)
@pytest.mark.parametrize(
    ("policy", "top_k", "extra"),
    [
        ("paper", 1000, {}),
        ("paper", 2, {}),  # the top-K window is too short: exact re-scan must give the same answer
        ("positive-aware", 1000, {}),
        ("hybrid", 1000, {"dedup_negatives": False}),
        ("hybrid", 1000, {"dedup_sim": 0.8}),  # greedy near-duplicate skipping among the chosen negatives
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_selection_equals_brute_force_definition(policy, top_k, extra, reading, seed):
    ds, D, ids, Q, qids = random_case(seed)
    qrels = ds.split_qrels("train")
    n = 4
    mine = {"top_k": top_k, "dedup_sim": 0.9999, "num_negatives": n, "paper_num_negatives": n, **extra}
    rows, st = mine_negatives(
        ds, D, ids, Q, qids, "train", {"mine": mine}, policy=policy, positive_reading=reading
    )
    dup = extra.get("dedup_sim") if policy == "hybrid" and extra.get("dedup_negatives", True) else None
    ref = brute_force(policy, reading, D, Q, qids, qrels, n, dup_sim=dup, guard_sim=mine["dedup_sim"])
    got = {(r["query_id"], r["positive_id"]): r["negative_ids"] for r in rows}
    assert got == ref
    assert st["pairs"] == len(ref) == st["readings"][reading]["pairs"]
    assert st["readings"][reading]["pairs_with_negative"] == sum(1 for v in ref.values() if v)


def test_per_pair_yields_far_more_pairs_than_all_positives_with_30_positives():
    ds, D, ids, Q, qids = many_positives_case(n_pos=30)
    runs = {
        r: mine_negatives(ds, D, ids, Q, qids, "train", {"mine": {}}, policy="paper", positive_reading=r)
        for r in READINGS
    }
    pp, allp = runs["per-pair"][1], runs["all-positives"][1]
    assert pp["pairs"] == allp["pairs"] == 12 * 30
    assert pp["pairs_with_negatives"] >= 3 * max(1, allp["pairs_with_negatives"])
    assert pp["queries_without_negative"] < allp["queries_without_negative"]
    # each run reports both readings, and the counts of the reading it did not use equal the other run's own counts
    assert pp["readings"] == allp["readings"]
    assert pp["readings"]["all-positives"]["pairs_with_negative"] == allp["pairs_with_negatives"]
    # per-pair: a pair's negatives beat its own positive, are never another positive of the query
    rows = runs["per-pair"][0]
    for r in rows:
        pos = set(ds.qrels["train"][r["query_id"]])
        assert not set(r["negative_ids"]) & pos
        assert all(dqn < r["d_qp"] for dqn in r["d_qn"])
    assert len({tuple(r["negative_ids"]) for r in rows if r["query_id"] == "q0"}) > 1  # pairs differ


@pytest.mark.parametrize("policy", ["positive-aware", "hybrid"])
def test_per_pair_cap_policies_use_each_pairs_own_positive(policy):
    ds, D, ids, Q, qids = many_positives_case(n_pos=30)
    rows, st = mine_negatives(
        ds, D, ids, Q, qids, "train", {"mine": {"top_k": 20, "num_negatives": 3}}, policy=policy
    )
    assert st["positive_reading"] == "per-pair"
    for r in rows:
        s_qp = 1 - r["d_qp"]
        cap = s_qp - 0.05 * abs(s_qp)
        assert all(1 - dqn <= cap + 1e-5 for dqn in r["d_qn"]), r
        if policy == "hybrid":
            assert all(dqn < dpn + 1e-6 for dqn, dpn in zip(r["d_qn"], r["d_pn"], strict=True))
    assert (
        st["readings"]["per-pair"]["pairs_with_negative"]
        >= st["readings"]["all-positives"]["pairs_with_negative"]
    )


def test_warning_names_the_setting_when_most_queries_get_no_negative(caplog):
    ds, D, ids, Q, qids = many_positives_case(n_pos=30)
    with caplog.at_level(logging.WARNING, logger="hardneg.mine"):
        _, st = mine_negatives(
            ds, D, ids, Q, qids, "train", {"mine": {}}, policy="paper", positive_reading="all-positives"
        )
    assert st["queries_without_negative"] > st["queries_mined"] / 2
    msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("mine.positive_reading: per-pair" in m for m in msgs), msgs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hardneg.mine"):
        _, st = mine_negatives(ds, D, ids, Q, qids, "train", {"mine": {}}, policy="paper")
    assert st["queries_without_negative"] <= st["queries_mined"] / 2
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warn_if_few_negatives({"queries_mined": 10, "queries_without_negative": 6, "policy": "hybrid"})
    assert not warn_if_few_negatives({"queries_mined": 10, "queries_without_negative": 5, "policy": "hybrid"})


def test_stats_keys_for_both_readings():
    ds, D, ids, Q, qids = random_case(3)
    for policy in ("paper", "hybrid", "rank-window", "random"):
        _, st = mine_negatives(ds, D, ids, Q, qids, "train", {"mine": {}}, policy=policy)
        assert {"pairs", "pairs_with_negatives", "pairs_without_negative", "queries_without_negative"} <= set(
            st
        )
        assert st["positive_reading"] == "per-pair" and set(st["readings"]) == set(READINGS)
        for counts in st["readings"].values():
            assert set(counts) == {
                "pairs",
                "pairs_with_negative",
                "pairs_without_negative",
                "queries_without_negative",
            }
            assert counts["pairs"] == st["pairs"]
        assert st["readings"]["per-pair"]["pairs_without_negative"] == st["pairs_without_negative"]
        if policy in ("rank-window", "random"):  # no rule uses the positive: both readings are the same
            assert st["readings"]["per-pair"] == st["readings"]["all-positives"]


def test_positive_reading_config_and_params_default():
    for f in ("params.yaml", "hardneg/resources/params.default.yaml"):
        assert yaml.safe_load((REPO / f).read_text())["mine"]["positive_reading"] == "per-pair"
    assert MineConfig.from_params({"mine": {"policy": "paper"}}).positive_reading == "per-pair"
    both = {"policy": "paper", "positive_reading": "all-positives"}
    assert MineConfig.from_params({"mine": both}).positive_reading == ("all-positives")
    with pytest.raises(ConfigError, match="positive_reading"):
        MineConfig.from_params({"mine": {"policy": "paper", "positive_reading": "some"}})
    with pytest.raises(ConfigError, match="unknown mine option"):
        MineConfig.from_params({"mine": {"positive_readings": "per-pair"}})


# ---------------------------------------------------------------------------------------------- graded qrels


def test_graded_qrels_grade_zero_is_never_a_training_positive():
    from hardneg.biencoder import training_set

    ds, D, ids, Q, qids = random_case(4, n_queries=1, max_pos=1)
    (p,) = ds.qrels["train"]["q0"]
    ds.qrels["train"]["q0"] = {p: 3, "d1": 0, "d2": 4, "d3": 1}  # graded 0..4; d1 judged non-relevant
    rows, st = mine_negatives(ds, D, ids, Q, qids, "train", {"mine": {}}, policy="hybrid")
    assert sorted(r["positive_id"] for r in rows) == sorted({p, "d2", "d3"})
    assert all(set(r["negative_ids"]).isdisjoint({p, "d2", "d3"}) for r in rows)
    ts = training_set(ds, rows, "train")
    assert ts.positives["q0"] == sorted({p, "d2", "d3"})
    assert "d1" not in ts.positives["q0"]


def test_evaluation_uses_graded_relevance():
    from hardneg.evaluate import evaluate_run

    qrels = {"q": {"a": 1, "b": 3, "z": 0}}
    run = {"q": {"a": 0.9, "z": 0.8, "b": 0.7}}  # grade 1 first, grade 0 second, grade 3 third
    res = evaluate_run(run, qrels, ("ndcg@10", "mrr@10"))
    dcg = 1 / math.log2(2) + 3 / math.log2(4)
    idcg = 3 / math.log2(2) + 1 / math.log2(3)
    assert res.mean["ndcg@10"] == pytest.approx(dcg / idcg)  # graded gains; binary relevance would give 0.877
    assert res.mean["mrr@10"] == pytest.approx(1.0)
    binary = evaluate_run(run, {"q": {"a": 1, "b": 1}}, ("ndcg@10",)).mean["ndcg@10"]
    assert binary != pytest.approx(dcg / idcg)
