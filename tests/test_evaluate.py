"""Metrics against hand-computed values, reranking/fusion runs, the fusion weight, paired tests, full evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hardneg.config import default_params
from hardneg.data import load_dataset
from hardneg.errors import HardnegError
from hardneg.evaluate import (
    combine,
    evaluate_reranker,
    evaluate_run,
    paired_test,
    rerank_scores,
    top_candidates,
    tune_fusion_weight,
    write_evaluation,
)
from hardneg.settings import settings

QRELS = {"q1": {"a": 1}, "q2": {"b": 1, "c": 1}, "q3": {"z": 1}}
RUN = {
    "q1": {"x": 0.9, "a": 0.8, "y": 0.1},  # relevant at rank 2
    "q2": {"b": 0.9, "d": 0.8, "c": 0.7},  # relevant at ranks 1 and 3
    "q3": {"x1": 0.9, "x2": 0.8, "x3": 0.7, "z": 0.6},  # relevant at rank 4
}


pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


def test_metrics_match_hand_computed_values():
    res = evaluate_run(RUN, QRELS)
    assert res.mean["mrr@3"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert res.mean["mrr@10"] == pytest.approx((1 / 2 + 1 + 1 / 4) / 3)
    ndcg_q1 = 1 / math.log2(3)
    ndcg_q2 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    ndcg_q3 = 1 / math.log2(5)
    assert res.mean["ndcg@10"] == pytest.approx((ndcg_q1 + ndcg_q2 + ndcg_q3) / 3)
    assert res.mean["recall@100"] == pytest.approx(1.0)
    assert res.per_query["mrr@10"] == pytest.approx({"q1": 0.5, "q2": 1.0, "q3": 0.25})
    assert res.n_queries == 3


def test_queries_missing_from_the_run_score_zero_and_extra_queries_are_ignored():
    run = {"q1": {"a": 1.0}, "other": {"a": 1.0}}
    res = evaluate_run(run, QRELS, ("mrr@10", "recall@100"))
    assert res.mean["mrr@10"] == pytest.approx(1 / 3)
    assert res.per_query["mrr@10"] == {"q1": 1.0, "q2": 0.0, "q3": 0.0}
    with pytest.raises(HardnegError):
        evaluate_run(run, {"q1": {"a": 0}})


def test_combine_reorders_only_the_head_and_keeps_the_tail():
    fs = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    rr = {"q": {"a": 0.1, "b": 0.9}}
    order = lambda run: [d for d, _ in sorted(run["q"].items(), key=lambda kv: -kv[1])]  # noqa: E731
    assert order(combine(fs, rr, depth=2)) == ["b", "a", "c"]
    assert order(combine(fs, rr, depth=2, weight=0.0)) == ["a", "b", "c"]  # first stage only
    assert order(combine(fs, rr, depth=2, weight=1.0)) == ["b", "a", "c"]
    with pytest.raises(HardnegError, match="no reranker score"):
        combine(fs, {"q": {"a": 1.0}}, depth=2)


def test_tune_fusion_weight_picks_the_one_weight_that_wins():
    # two queries whose relevant document ("a") needs opposite things: q1 reaches rank 2 only once the reranker has
    # weight >= 0.3, q2 stays at rank 1 only while it has weight <= 0.3. The dev curve peaks at w = 0.3 and nowhere
    # else (a swapped weight, w * first stage + (1 - w) * reranker, would pick 0.7; a flat curve would pick 0.0)
    fs = {"q1": {"a": 1.0, "x": 2.0, "y": 4.0}, "q2": {"a": 2.0, "x": 0.0, "y": 1.0}}
    rr = {"q1": {"a": 2.0, "x": 0.0, "y": 1.0}, "q2": {"a": 0.0, "x": 1.0, "y": 2.0}}
    qrels = {"q1": {"a": 1}, "q2": {"a": 1}}
    grid = [round(0.1 * i, 1) for i in range(11)]
    w, curve = tune_fusion_weight(fs, rr, qrels, 3, grid)
    assert w == 0.3
    assert curve["0.3"] == pytest.approx((1 / 2 + 1) / 2)
    assert [k for k, v in curve.items() if v == max(curve.values())] == ["0.3"]  # a single peak
    assert curve["0"] == pytest.approx((1 / 3 + 1) / 2) and curve["1"] == pytest.approx((1 + 1 / 3) / 2)
    assert curve["0.2"] < curve["0.3"] and curve["0.4"] < curve["0.3"]
    # ties on MRR@10 go to the better nDCG@10, then to the smaller weight
    flat, _ = tune_fusion_weight(fs, rr, qrels, 3, [0.7, 0.0, 1.0])
    assert flat == 0.0


@pytest.mark.parametrize(
    ("min_gain", "passed"),
    [(None, True), (0.0, True), (0.05, True), (0.0501, False), (0.2, False)],
)
def test_quality_gate_passes_at_the_gain_and_fails_above_it(repo_root, min_gain, passed):
    """served (fusion) MRR@10 - first stage MRR@10 = 0.05 here: the gate passes up to that gain and fails above it;
    None = the shipped params.yaml value (pipeline.min_gain_mrr10)."""
    from hardneg.config import load_params
    from hardneg.stages import headline, require_gate

    params = load_params(repo_root / "params.yaml")
    if min_gain is not None:
        params["pipeline"]["min_gain_mrr10"] = min_gain
    metrics = {
        "systems": {"first_stage": {"mrr@10": 0.5}, "rerank": {"mrr@10": 0.4}, "fusion": {"mrr@10": 0.55}}
    }
    h = headline(metrics, settings(params))
    assert h["served_system"] == "fusion" and h["gain_mrr@10"] == pytest.approx(0.05)
    assert h["gate_min_gain"] == params["pipeline"]["min_gain_mrr10"]
    assert h["gate_passed"] is passed
    if passed:
        require_gate(h)
    else:
        with pytest.raises(HardnegError, match="quality gate failed"):
            require_gate(h)
    # a reranker that loses to its first stage fails the shipped gate (min_gain_mrr10 >= 0)
    worse = {"systems": {"first_stage": {"mrr@10": 0.5}, "fusion": {"mrr@10": 0.49}}}
    assert headline(worse, settings(load_params(repo_root / "params.yaml")))["gate_passed"] is False
    # a reranker fused at weight 0 serves the first stage's ranking: gain 0.0 meets the shipped gate (>=, not >)
    same = {"systems": {"first_stage": {"mrr@10": 0.5}, "fusion": {"mrr@10": 0.5}}}
    assert headline(same, settings(load_params(repo_root / "params.yaml")))["gate_passed"] is True


def test_paired_test_sanity():
    rng = np.random.default_rng(0)
    a = {f"q{i}": float(v) for i, v in enumerate(rng.random(60))}
    same = paired_test(a, dict(a))
    assert same["p_ttest"] == 1.0 and same["p_randomization"] == 1.0 and same["diff"] == 0.0
    better = {q: min(1.0, v + 0.3 + 0.05 * rng.standard_normal()) for q, v in a.items()}
    res = paired_test(better, a, n_resamples=2000)
    assert res["diff"] > 0.2 and res["p_ttest"] < 1e-6 and res["p_randomization"] < 0.01
    assert res["ci95"][0] > 0.0
    noise = {q: v + 0.01 * rng.standard_normal() for q, v in a.items()}
    assert paired_test(noise, a)["p_randomization"] > 0.01
    with pytest.raises(HardnegError):
        paired_test({"x": 1.0}, {"y": 1.0})


def test_rerank_scores_maps_pairs_back_to_ids():
    cand = {"q1": ["a", "b"], "q2": ["b"]}
    got = rerank_scores(
        lambda pairs: np.array([len(d) for _, d in pairs], float),
        {"q1": "Q1", "q2": "Q2"},
        {"a": "aa", "b": "bbb"},
        cand,
    )
    assert got == {"q1": {"a": 2.0, "b": 3.0}, "q2": {"b": 3.0}}
    assert top_candidates({"q": {"a": 1.0, "b": 2.0, "c": 2.0}}, 2) == {"q": ["b", "c"]}


class OracleScorer:
    """Scores 1 for labelled (query, doc) pairs and 0 otherwise: reranking must reach the first stage's ceiling."""

    def __init__(self, ds):
        self.rel = {
            (ds.queries[q].text, ds.corpus[d].full_text)
            for s in ds.qrels
            for q, docs in ds.split_qrels(s).items()
            for d in docs
        }

    def score_pairs(self, pairs):
        return np.array([1.0 if p in self.rel else 0.0 for p in pairs], dtype=np.float32)


def test_evaluate_reranker_end_to_end_with_an_oracle(tiny_data_dir, tmp_path):
    from hardneg.retrieve import bm25_search

    ds = load_dataset(tiny_data_dir)
    params = default_params()
    params["retrieve"]["rerank_depth"] = 20
    qids = list(ds.split_qrels("dev")) + list(ds.split_qrels("test"))
    fs = bm25_search(ds.corpus, {q: ds.queries[q] for q in qids}, 50)
    ev = evaluate_reranker(ds, OracleScorer(ds), fs, params, extra_first_stages={"bm25_again": fs})
    sysm = ev.metrics["systems"]
    assert set(sysm) == {"first_stage", "bm25_again", "rerank", "fusion"}
    assert sysm["bm25_again"] == sysm["first_stage"]
    # the oracle puts every relevant candidate of the top-20 first
    test_qrels = ds.split_qrels("test")
    hits = [q for q in test_qrels if any(d in test_qrels[q] for d in top_candidates(fs, 20)[q])]
    assert sysm["rerank"]["mrr@10"] == pytest.approx(len(hits) / len(test_qrels))
    assert sysm["rerank"]["mrr@10"] >= sysm["first_stage"]["mrr@10"]
    assert ev.metrics["fusion_weight"] > 0.0
    assert set(ev.per_query) == {"first_stage", "bm25_again", "rerank", "fusion"}
    write_evaluation(ev, tmp_path / "eval")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]  # nothing written beside its own folder
    fusion = json.loads((tmp_path / "eval" / "fusion.json").read_text())
    assert fusion["weight"] == ev.metrics["fusion_weight"] and fusion["score"] == "sigmoid"
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["systems"]["fusion"] == sysm["fusion"]
    pq = json.loads((tmp_path / "eval" / "per_query.json").read_text())
    assert set(pq["fusion"]["mrr@10"]) == set(test_qrels)


def test_torch_scorer_returns_sigmoid_scores_in_input_order(copy_model):
    from sentence_transformers import CrossEncoder

    from hardneg.scoring import CrossEncoderScorer

    ce = CrossEncoder(str(copy_model()), num_labels=1, max_length=32, device="cpu")
    pairs = [("short query", "a document"), ("another query", "a much longer document " * 10), ("q", "d")]
    s = CrossEncoderScorer(ce, 32, batch_size=2, bf16=False).score_pairs(pairs)
    ref = ce.predict(pairs, convert_to_numpy=True)  # ST applies the sigmoid of the 1-logit head
    assert s.shape == (3,) and np.all((s > 0) & (s < 1))
    np.testing.assert_allclose(s, ref, atol=1e-5)


def test_an_onnx_export_measures_like_the_torch_model(tmp_path_factory, tiny_model_dir, tiny_data_dir):
    """What is served is what is measured: the exported fp32 graph, scored through hardneg.rerank, gives the torch
    model's scores and therefore the same metrics and fusion weight."""
    from _tiny_reranker import tiny_export, trained_tiny_ce

    from hardneg.retrieve import bm25_search
    from hardneg.scoring import CrossEncoderScorer, OnnxScorer

    base = tmp_path_factory.getbasetemp()
    model_dir = trained_tiny_ce(base, tiny_model_dir, tiny_data_dir)
    export_dir = tiny_export(base, tiny_model_dir, tiny_data_dir)
    ds = load_dataset(tiny_data_dir)
    params = default_params()
    params["retrieve"]["rerank_depth"] = 10
    qids = list(ds.split_qrels("dev")) + list(ds.split_qrels("test"))
    fs = bm25_search(ds.corpus, {q: ds.queries[q] for q in qids}, 30)
    torch_scorer = CrossEncoderScorer(model_dir, bf16=False)
    onnx_scorer = OnnxScorer(export_dir, variant="fp32")
    pairs = [
        (ds.queries[q].text, ds.corpus[d].full_text) for q in qids[:5] for d in top_candidates(fs, 10)[q]
    ]
    np.testing.assert_allclose(onnx_scorer.score_pairs(pairs), torch_scorer.score_pairs(pairs), atol=1e-4)
    a = evaluate_reranker(ds, torch_scorer, fs, params)
    b = evaluate_reranker(ds, onnx_scorer, fs, params)
    assert a.metrics["fusion_weight"] == b.metrics["fusion_weight"]
    for system in ("rerank", "fusion"):
        assert a.metrics["systems"][system] == pytest.approx(b.metrics["systems"][system], abs=1e-6)


def test_the_gate_gives_seen_looking_queries_their_own_weight():
    """Two kinds of dev query: for 'memorised' ones (the reranker's best candidate is a training positive) the
    reranker is right and the first stage wrong; for the others the reverse. One global weight cannot serve both;
    the 'seen' gate gives each group its weight, and a gate that buys nothing is not chosen over 'none'."""
    from hardneg.evaluate import gate_weights, query_signals, tune_gate

    fs, rr, qrels = {}, {}, {}
    for i in range(20):
        q = f"q{i}"
        a, b, c, d = (f"{q}-{x}" for x in "abcd")
        memorised = i % 2 == 0
        # memorised: the reranker finds b, the first stage prefers a; otherwise the first stage finds c and the
        # reranker prefers a
        fs[q] = {a: 1.0, b: 0.0, c: 0.0, d: 0.0} if memorised else {c: 1.0, a: 0.0, b: 0.0, d: 0.0}
        rr[q] = {b: 1.0, a: 0.0, c: 0.0, d: 0.0} if memorised else {a: 1.0, b: 0.0, c: 0.0, d: 0.0}
        qrels[q] = {b if memorised else c: 1}
    train_docs = {
        f"q{i}-b" for i in range(0, 20, 2)
    }  # the memorised queries' answers were training positives
    grid = [0.0, 0.5, 1.0]
    gate, tried = tune_gate(fs, rr, qrels, 4, grid, train_docs)
    assert gate["signal"] == "seen" and gate["weight_high"] == 1.0 and gate["weight_low"] == 0.0
    assert max(t["dev"]["mrr@10"] for t in tried if t["signal"] == "none") < 0.8
    assert max(t["dev"]["mrr@10"] for t in tried if t["signal"] == "seen") == 1.0
    w = gate_weights(gate, query_signals(fs, rr, 4, train_docs))
    assert w["q0"] == 1.0 and w["q1"] == 0.0
    # the same dev queries without the memorised group: no gate helps, 'none' (tried first) wins the tie
    odd = {q: v for q, v in fs.items() if int(q[1:]) % 2}
    gate, _ = tune_gate(odd, rr, {q: qrels[q] for q in odd}, 4, grid, train_docs)
    assert gate["signal"] == "none" and gate["weight_low"] == gate["weight_high"] == 0.0


def test_the_depth_is_chosen_on_dev_and_the_server_weighs_a_request_as_evaluation_did():
    """choose_depth: the relevant document sits at first-stage rank 40 and the reranker finds it, so a depth that
    reaches it wins on dev. served_weight (what the server computes from the request's documents and the shipped
    hashes) equals the gate weight evaluation gave the same query."""
    from hardneg.evaluate import choose_depth, gate_weights, query_signals
    from hardneg.fusion import served_weight, text_sha256

    fs, rr, qrels = {}, {}, {}
    for i in range(10):
        q = f"q{i}"
        docs = [f"{q}-{r}" for r in range(60)]
        fs[q] = {d: 60.0 - r for r, d in enumerate(docs)}
        rr[q] = {d: (1.0 if r == 40 else 0.0) for r, d in enumerate(docs)}
        qrels[q] = {docs[40]: 1}
    depth, (gate, _), curve = choose_depth((fs, rr, qrels), [20, 30, 50], [0.0, 1.0], set(), ["none"])
    assert depth == 50 and curve["50"]["mrr@10"] == 1.0 and curve["30"]["mrr@10"] == 0.0
    # the seen signal, evaluation vs serving, on the same candidates
    texts = {d: f"text of {d}" for q in fs for d in fs[q]}
    seen_ids = {"q0-40", "q3-40"}
    gate = {"signal": "seen", "threshold": None, "weight_high": 1.0, "weight_low": 0.2}
    want = gate_weights(gate, query_signals(fs, rr, depth, seen_ids))
    hashes = {text_sha256(texts[d]) for d in seen_ids}
    for q in fs:
        head = sorted(fs[q], key=lambda d: -fs[q][d])[:depth]
        got = served_weight(
            {"weight": 0.5, "gate": gate}, [rr[q][d] for d in head], [texts[d] for d in head], hashes
        )
        assert got == want[q], q
    assert want["q0"] == 1.0 and want["q1"] == 0.2


def test_a_gate_that_loses_on_dev_unseen_queries_is_not_served():
    """60 dev queries the reranker gets right (memorised), 40 unseen ones it gets wrong and the first stage right:
    one global weight of 1 wins on dev overall, but it is below the first stage on the 40 unseen queries, so with
    them as the guard the first stage alone is served; without the guard the weight of 1 is."""
    from hardneg.evaluate import tune_gate

    fs, rr, qrels, unseen = {}, {}, {}, []
    for i in range(100):
        q = f"q{i}"
        a, b, c, d = (f"{q}-{x}" for x in "abcd")
        fs[q] = {a: 1.0, b: 0.0, c: 0.0, d: 0.0}
        rr[q] = {b: 1.0, a: 0.0, c: 0.0, d: 0.0}
        qrels[q] = {b if i < 60 else a: 1}
        if i >= 60:
            unseen.append(q)
    free, _ = tune_gate(fs, rr, qrels, 4, [0.0, 1.0], set(), ["none"], max_p=0.05)
    assert free["weight_low"] == free["weight_high"] == 1.0
    guarded, tried = tune_gate(fs, rr, qrels, 4, [0.0, 1.0], set(), ["none"], max_p=0.05, guard_ids=unseen)
    assert guarded["weight_low"] == guarded["weight_high"] == 0.0
    assert [t["guard_ok"] for t in tried] == [False, True] and tried[0]["dev_unseen"] == 0.5  # a falls to 2nd
    # fewer guard queries than min_guard: no guard
    few, _ = tune_gate(fs, rr, qrels, 4, [0.0, 1.0], set(), ["none"], max_p=0.05, guard_ids=unseen[:10])
    assert few["weight_high"] == 1.0


def test_a_weight_for_unseen_looking_queries_must_earn_it_on_dev_unseen():
    """The unseen guard with gate_max_p: a gate that gives the queries it does not pass a weight above 0 must beat
    the first stage on dev-unseen significantly, not just tie it (here the reranker adds nothing on them)."""
    from hardneg.evaluate import tune_gate

    fs, rr, qrels, unseen = {}, {}, {}, []
    for i in range(100):
        q = f"q{i}"
        a, b, c, d = (f"{q}-{x}" for x in "abcd")
        fs[q] = {a: 1.0, b: 0.0, c: 0.0, d: 0.0}
        if i < 60:  # memorised: the reranker finds b
            rr[q], qrels[q] = {b: 1.0, a: 0.0, c: 0.0, d: 0.0}, {b: 1}
        else:  # unseen: both find a
            rr[q], qrels[q] = {a: 1.0, b: 0.0, c: 0.0, d: 0.0}, {a: 1}
            unseen.append(q)
    lenient, _ = tune_gate(fs, rr, qrels, 4, [0.0, 1.0], set(), ["none"], guard_ids=unseen)
    assert lenient["weight_low"] == 1.0  # ties the first stage on dev-unseen: enough without max_p
    strict, tried = tune_gate(fs, rr, qrels, 4, [0.0, 1.0], set(), ["none"], max_p=0.05, guard_ids=unseen)
    assert strict["weight_low"] == strict["weight_high"] == 0.0 and tried[0]["guard_ok"] is False


def test_dev_folds_partition_the_queries_whatever_their_order():
    from hardneg.evaluate import dev_folds

    qids = [f"q{i}" for i in range(23)]
    folds = dev_folds(qids, 5, seed=13)
    assert sorted(q for f in folds for q in f) == sorted(qids)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    assert dev_folds(list(reversed(qids)), 5, seed=13) == folds
    assert dev_folds(qids, 5, seed=14) != folds


def _gate_cv_case(unseen_top: str, n_seen: int):
    """100 dev queries over 4 candidates each; the first stage ranks a first. ``n_seen`` "seen" queries: relevant b,
    a training positive the reranker finds. The other, "unseen" ones: relevant a; the reranker ranks ``unseen_top``
    first ("a": it agrees with the first stage; "c": a training positive that is not relevant)."""
    fs, rr, qrels, seen_ids, ids = {}, {}, {}, set(), {"all": [], "seen": [], "unseen": []}
    for i in range(100):
        q = f"q{i:03d}"
        a, b, c, d = (f"{q}-{x}" for x in "abcd")
        fs[q] = {a: 1.0, b: 0.5, c: 0.2, d: 0.0}
        seen_ids |= {b, c}
        if i < n_seen:
            rr[q], qrels[q] = {b: 1.0, a: 0.0, c: 0.0, d: 0.0}, {b: 1}
        else:
            top = a if unseen_top == "a" else c
            rr[q], qrels[q] = {top: 1.0, **{x: 0.0 for x in (a, b, c, d) if x != top}}, {a: 1}
        ids["all"].append(q)
        ids["seen" if i < n_seen else "unseen"].append(q)
    return (fs, rr, qrels), seen_ids, ids


def test_the_served_choice_is_measured_on_dev_queries_it_was_not_made_on():
    """Cross-validated dev: a seen gate that routes exactly the seen queries scores 1.0 out of sample. When the
    reranker sends unseen queries to an irrelevant training positive and each training part of the folds has fewer
    than 30 unseen queries (the in-sample guard is skipped there), the gate is tuned on seen queries, and the
    held-out unseen queries show the loss that the in-sample numbers cannot."""
    from hardneg.evaluate import choose_depth, cross_validated_gate

    dev, seen_ids, ids = _gate_cv_case("a", n_seen=60)
    cv = cross_validated_gate(dev, [4], [0.0, 1.0], seen_ids, ["none", "seen"], 0.05, ids, folds=5, seed=13)
    assert cv["served"]["all"]["mrr@10"] == pytest.approx(1.0)
    assert cv["first_stage"]["all"]["mrr@10"] == pytest.approx(0.6 * 0.5 + 0.4)

    dev, seen_ids, ids = _gate_cv_case("c", n_seen=64)
    cv = cross_validated_gate(dev, [4], [0.0, 1.0], seen_ids, ["seen"], None, ids, folds=5, seed=13)
    assert cv["served"]["unseen"]["mrr@10"] < cv["first_stage"]["unseen"]["mrr@10"] == 1.0
    assert cv["served"]["seen"]["mrr@10"] > cv["first_stage"]["seen"]["mrr@10"] == 0.5
    # in sample, on all of dev (36 unseen queries: the guard applies), the same choice serves the first stage
    _, (gate, _), _ = choose_depth(dev, [4], [0.0, 1.0], seen_ids, ["seen"], None, ids["unseen"])
    assert gate["weight_high"] == gate["weight_low"] == 0.0
    # off, or too few dev queries to fold: said, not measured
    assert "skipped" in cross_validated_gate(
        dev, [4], [0.0, 1.0], seen_ids, ["seen"], None, ids, folds=0, seed=13
    )
    small = tuple({q: v for q, v in x.items() if q < "q005"} for x in dev)
    assert "skipped" in cross_validated_gate(
        small, [4], [0.0, 1.0], seen_ids, ["seen"], None, ids, folds=5, seed=13
    )
