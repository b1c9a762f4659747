"""The honest protocol: every choice is made on dev, test labels never influence a choice.

Each choice is tested on a signal that is RIGHT on one split and WRONG on the other, and every test also asserts that
the split it must not read would have chosen differently, so none of them can pass vacuously. The fusion tests run
in both orientations: with the signal right on dev, dev must choose the grid's last weight, which a tuner that ignores
the labels (or returns the grid's first value, every tuner's start and tie-break) cannot produce. Scrambled test
labels must change the test numbers (asserted: the scramble bites) and leave every choice unchanged.

Choices covered: the hybrid's BM25 weight (baselines.tune_hybrid), the pipeline's fusion weight
(evaluate.evaluate_reranker, which is also the quality study's: its arms run the evaluate stage, test_quality.py
``test_an_arm_is_the_pipeline_stages_with_its_params_override``), and in the quality study its ensemble weights
(baselines.choose_ensemble_weights, as quality.run_study calls it) and its best mined policy
(study_report.summarize). Mining's independence from dev/test labels is tested in test_mine.py
(``test_mining_reads_no_dev_or_test_label``), the trainer's in test_biencoder.py.
"""

from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest

from hardneg.baselines import tune_hybrid
from hardneg.config import default_params
from hardneg.data import load_dataset, load_dataset_for
from hardneg.evaluate import evaluate_reranker

pytestmark = pytest.mark.unit

GRID = [0.0, 1.0]
# (the split the signal is right on, the weight dev must choose, the weight test labels would choose)
ORIENTATIONS = [
    pytest.param("test", 0.0, 1.0, id="wrong-on-dev"),
    pytest.param("dev", 1.0, 0.0, id="right-on-dev"),
]


@pytest.fixture(scope="module")
def ds(tiny_data_dir):
    return load_dataset(tiny_data_dir)


def _other(split: str) -> str:
    return "dev" if split == "test" else "test"


def _first_stage(ds):
    """A mediocre first stage over every doc: each dev/test query's positives at ranks 3.., the rest in id order (so
    MRR@10 sees both a better and a worse re-ordering)."""
    docs = sorted(ds.corpus)
    run = {}
    for labels in (ds.split_qrels("dev"), ds.split_qrels("test")):
        for q, pos in labels.items():
            rest = [d for d in docs if d not in pos]
            order = [*rest[:2], *sorted(pos), *rest[2:]]
            run[q] = {d: float(len(order) - i) for i, d in enumerate(order)}
    return run


def _runs(ds, right_on: str):
    """The first stage and a signal that is right on ``right_on`` (its positives score 10) and wrong on the other
    split (its positives score -10)."""
    docs = sorted(ds.corpus)
    right, wrong = ds.split_qrels(right_on), ds.split_qrels(_other(right_on))
    signal = {q: {d: (10.0 if d in right[q] else 0.0) for d in docs} for q in right}
    signal.update({q: {d: (-10.0 if d in wrong[q] else 0.0) for d in docs} for q in wrong})
    return _first_stage(ds), signal


def _scrambled_test_qrels(ds):
    """Every test query's label moved to the first document in id order (no real positive of any test query)."""
    first = sorted(ds.corpus)[0]
    test = ds.split_qrels("test")
    assert all(first not in docs for docs in test.values())
    return {q: {first: 1} for q in test}


@pytest.mark.parametrize(("right_on", "on_dev", "on_test"), ORIENTATIONS)
def test_hybrid_weight_is_chosen_on_dev_only(ds, right_on, on_dev, on_test):
    fs, signal = _runs(ds, right_on)
    w, curve = tune_hybrid(signal, fs, ds.split_qrels("dev"), GRID, 50)
    w_test, curve_test = tune_hybrid(signal, fs, ds.split_qrels("test"), GRID, 50)
    assert (w, w_test) == (on_dev, on_test)  # the test labels would have chosen the other weight
    assert (
        curve[f"{on_dev:g}"] > curve[f"{on_test:g}"]
        and curve_test[f"{on_test:g}"] > curve_test[f"{on_dev:g}"]
    )


class _SignalScorer:
    """Reranker scores from the signal table, keyed by texts."""

    def __init__(self, ds, signal):
        self.table = {
            (ds.queries[q].text, ds.corpus[d].full_text): s
            for q, docs in signal.items()
            for d, s in docs.items()
        }

    def score_pairs(self, pairs):
        return np.array([self.table.get(p, 0.0) for p in pairs], np.float32)


@pytest.mark.parametrize(("right_on", "on_dev", "on_test"), ORIENTATIONS)
def test_fusion_weight_is_chosen_on_dev_and_test_labels_cannot_change_it(ds, right_on, on_dev, on_test):
    fs, signal = _runs(ds, right_on)
    params = default_params()
    params["retrieve"]["rerank_depth"] = 50
    params["evaluate"]["fusion_weights"] = GRID
    ev = evaluate_reranker(ds, _SignalScorer(ds, signal), fs, params)
    assert ev.metrics["fusion_weight"] == on_dev
    test_curve = ev.metrics["fusion_test_curve"]
    assert (
        test_curve[f"{on_test:g}"] > test_curve[f"{on_dev:g}"]
    )  # the test labels would pick the other weight
    # scrambling the test labels changes the test numbers, never the choice
    other = copy.copy(ds)
    other.qrels = {**ds.qrels, "test": _scrambled_test_qrels(ds)}
    ev2 = evaluate_reranker(other, _SignalScorer(ds, signal), fs, params)
    assert ev2.metrics["systems"]["fusion"] != ev.metrics["systems"]["fusion"]  # the scramble bites
    assert ev2.metrics["fusion_weight"] == ev.metrics["fusion_weight"]
    assert ev2.metrics["fusion_dev_curve"] == ev.metrics["fusion_dev_curve"]


def _two_model_embeddings(emb, ds):
    """``hardneg embed`` output of two synthetic models over ``ds``: one axis per document in both; the first model's
    queries point at their dev positives and at a wrong document for test queries, the second's the other way round.
    With the second model at weight 0 the ensemble is right on dev; at a weight above 1, right on test."""
    docs, qids = sorted(ds.corpus), sorted(ds.queries)
    dev, test = ds.split_qrels("dev"), ds.split_qrels("test")

    def wrong(q, labels):
        return next(d for d in docs if d not in labels[q])

    onehot = np.eye(len(docs), dtype=np.float32)
    ix = {d: i for i, d in enumerate(docs)}
    slugs = {"right-on-dev": (dev, test), "right-on-test": (test, dev)}
    for slug, (right, bad) in slugs.items():
        Q = np.zeros((len(qids), len(docs)), np.float32)
        for j, q in enumerate(qids):
            targets = right[q] if q in right else [wrong(q, bad)] if q in bad else [docs[0]]
            Q[j, [ix[d] for d in targets]] = 1.0
        (emb / slug).mkdir(parents=True)
        np.save(emb / slug / "corpus.npy", onehot)
        np.save(emb / slug / "queries.npy", Q)
        (emb / slug / "ids.json").write_text(json.dumps({"doc_ids": docs, "query_ids": qids}))
    (emb / "manifest.json").write_text(json.dumps({"models": list(slugs)}))
    return list(slugs)


class _Stop(Exception):
    pass


def test_the_study_ensemble_weights_are_chosen_on_dev_and_test_labels_cannot_change_them(
    tiny_data_dir, tmp_path, monkeypatch
):
    """The test hardneg/baselines.py promises: choose_ensemble_weights, as the quality study calls it, picks the
    ensemble weights on dev (test labels would pick others) and scrambling the test labels cannot change them."""
    import hardneg.quality as quality
    from hardneg.baselines import choose_ensemble_weights

    params = default_params()
    grid = [0.0, 4.0]
    params["compare"]["ensemble_weight_grid"] = grid
    params["retrieve"]["top_k"] = 30
    study_ds, _ = load_dataset_for(tiny_data_dir, params)  # the study's splits (dev topped up from train)
    emb = tmp_path / "emb"
    slugs = _two_model_embeddings(emb, study_ds)
    var, k = params["reduce"]["variance"], 30
    assert choose_ensemble_weights(emb, slugs, study_ds.split_qrels("dev"), grid, var, k)[0] == [1.0, 0.0]
    assert choose_ensemble_weights(emb, slugs, study_ds.split_qrels("test"), grid, var, k)[0] == [1.0, 4.0]

    scrambled = tmp_path / "scrambled"
    shutil.copytree(tiny_data_dir, scrambled)
    lines = ["query-id\tcorpus-id\tscore"] + [
        f"{q}\t{d}\t1" for q, ds_ in _scrambled_test_qrels(study_ds).items() for d in ds_
    ]
    (scrambled / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")
    scrambled_ds, _ = load_dataset_for(scrambled, params)
    assert scrambled_ds.split_qrels("test") != study_ds.split_qrels("test")  # the scramble bites
    assert scrambled_ds.split_qrels("dev") == study_ds.split_qrels("dev")

    chosen = []

    def spy(*a, **kw):  # the study's own call, stopped right after the choice
        chosen.append(choose_ensemble_weights(*a, **kw)[0])
        raise _Stop

    monkeypatch.setattr(quality, "choose_ensemble_weights", spy)
    for data in (tiny_data_dir, scrambled):
        with pytest.raises(_Stop):
            quality.run_study(data, emb, tmp_path / "out", params)
    assert chosen == [[1.0, 0.0], [1.0, 0.0]]


def _arm_result(served_dev, served_test, alone_dev, alone_test):
    """One (arm, seed) result as quality.run_study stores it: ``{system: {split: {metric: value}}}``."""
    cell = {
        "served": {"dev": served_dev, "test": served_test},
        "alone": {"dev": alone_dev, "test": alone_test},
    }
    return {
        "steps": 3,
        "negatives": {},
        **{
            s: {sp: {m: v for m in ("mrr@10", "ndcg@10", "mrr@3")} for sp, v in by.items()}
            for s, by in cell.items()
        },
    }


def test_the_best_policy_is_the_dev_argmax_over_the_mined_arms():
    """study_report.summarize: best_policy is the mined arm with the best served dev MRR@10 (mean over seeds), not
    the test winner, not the best reranker alone, not a non-mined arm, not the first seed's winner."""
    from hardneg.study_report import NOT_MINED, summarize

    # arm: per seed (served dev, served test, alone dev, alone test) MRR@10
    table = {
        "untuned": [(0.95, 0.50, 0.30, 0.30)] * 2,  # the best on dev, but not a mined policy
        "in-batch": [(0.40, 0.97, 0.20, 0.20)] * 2,  # the best on test
        "paper": [(0.65, 0.40, 0.10, 0.10), (0.95, 0.40, 0.10, 0.10)],  # mined, best dev mean (0.80)
        "positive-aware": [(0.60, 0.90, 0.90, 0.90)] * 2,  # mined, best on test and the best alone on dev
        "bm25": [(0.70, 0.80, 0.50, 0.50)] * 2,  # mined, wins the first seed on dev
    }
    mined = [a for a in table if a not in NOT_MINED]

    def winner(arms, col, seeds=(0, 1)):
        return max(arms, key=lambda a: np.mean([table[a][s][col] for s in seeds]))

    # the decoys: each other reading of "best" picks another arm
    assert (winner(mined, 1), winner(mined, 2), winner(table, 0), winner(mined, 0, (0,))) == (
        "positive-aware",
        "positive-aware",
        "untuned",
        "bm25",
    )
    rng = np.random.default_rng(0)
    qids = [str(i) for i in range(12)]
    results = {
        "arms": {
            a: {str(s + 1): _arm_result(*row) for s, row in enumerate(rows)} for a, rows in table.items()
        },
        "per_query": {
            a: {
                str(s + 1): {
                    sys: {"test": dict(zip(qids, rng.random(12).tolist(), strict=True))}
                    for sys in ("served", "alone")
                }
                for s in range(2)
            }
            for a in table
        },
    }
    summ = summarize(results, default_params())
    assert summ["best_policy"] == "paper"
    assert summ["arms"]["paper"]["served"]["dev"]["mrr@10"]["mean"] == pytest.approx(0.80)
    assert {a for a, r in summ["arms"].items() if r["p_vs_best"] is None} == {"paper"}


def test_dev_top_up_never_touches_test_and_only_moves_train_queries(tiny_data_dir):
    params = default_params()
    params["data"]["dev_min_queries"] = 12
    ds, rec = load_dataset_for(tiny_data_dir, params)
    raw = load_dataset(tiny_data_dir)
    assert ds.qrels["test"] == raw.qrels["test"]
    moved = set(ds.qrels["dev"]) - set(raw.qrels["dev"])
    assert rec["top_up"]["moved"] == len(moved) > 0
    assert moved <= set(raw.qrels["train"]) and moved.isdisjoint(ds.qrels["train"])
