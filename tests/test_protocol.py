"""The honest protocol: every choice is made on dev, test labels never influence a choice.

Each test builds a signal that is an ORACLE on the test queries and an ANTI-oracle on the dev queries: a choice made
on test would pick it (weight 1), a choice made on dev must reject it (weight 0). So the tests fail if any tuning
reads test labels. Mining's independence from dev/test labels is tested in test_mine.py
(``test_mining_reads_no_dev_or_test_label``), the trainer's in test_biencoder.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from hardneg.baselines import tune_hybrid
from hardneg.config import default_params
from hardneg.data import load_dataset, load_dataset_for
from hardneg.evaluate import evaluate_reranker

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def ds(tiny_data_dir):
    return load_dataset(tiny_data_dir)


def _runs(ds):
    """A neutral first stage (every doc, id order) and a signal that is right on test and wrong on dev."""
    docs = sorted(ds.corpus)
    test, dev = ds.split_qrels("test"), ds.split_qrels("dev")
    neutral = {q: {d: float(len(docs) - i) for i, d in enumerate(docs)} for q in (*test, *dev)}
    signal = {}
    for q in test:
        signal[q] = {d: (10.0 if d in test[q] else 0.0) for d in docs}
    for q in dev:
        signal[q] = {d: (-10.0 if d in dev[q] else 0.0) for d in docs}
    return neutral, signal


def test_hybrid_weight_is_chosen_on_dev_only(ds):
    neutral, signal = _runs(ds)
    w, curve = tune_hybrid(signal, neutral, ds.split_qrels("dev"), [0.0, 0.5, 1.0], 50)
    assert w == 0.0  # on test the signal is perfect (w=1 would win there)
    assert curve["1"] < curve["0"]


class _SignalScorer:
    """Reranker scores from the oracle/anti-oracle table, keyed by texts."""

    def __init__(self, ds, signal):
        self.table = {
            (ds.queries[q].text, ds.corpus[d].full_text): s
            for q, docs in signal.items()
            for d, s in docs.items()
        }

    def score_pairs(self, pairs):
        return np.array([self.table.get(p, 0.0) for p in pairs], np.float32)


def test_fusion_weight_is_chosen_on_dev_and_test_labels_cannot_change_it(ds):
    neutral, signal = _runs(ds)
    params = default_params()
    params["retrieve"]["rerank_depth"] = 50
    params["evaluate"]["fusion_weights"] = [0.0, 0.5, 1.0]
    ev = evaluate_reranker(ds, _SignalScorer(ds, signal), neutral, params)
    assert ev.metrics["fusion_weight"] == 0.0
    assert ev.metrics["fusion_test_curve"]["1"] > ev.metrics["fusion_test_curve"]["0"]  # test would pick 1
    # scrambling the test labels changes the test numbers, never the choice
    other = copy.copy(ds)
    docs = sorted(ds.corpus)
    other.qrels = {**ds.qrels, "test": {q: {docs[0]: 1} for q in ds.qrels["test"]}}
    ev2 = evaluate_reranker(other, _SignalScorer(ds, signal), neutral, params)
    assert ev2.metrics["fusion_weight"] == ev.metrics["fusion_weight"]
    assert ev2.metrics["fusion_dev_curve"] == ev.metrics["fusion_dev_curve"]


def test_dev_top_up_never_touches_test_and_only_moves_train_queries(tiny_data_dir):
    params = default_params()
    params["data"]["dev_min_queries"] = 12
    ds, rec = load_dataset_for(tiny_data_dir, params)
    raw = load_dataset(tiny_data_dir)
    assert ds.qrels["test"] == raw.qrels["test"]
    moved = set(ds.qrels["dev"]) - set(raw.qrels["dev"])
    assert rec["top_up"]["moved"] == len(moved) > 0
    assert moved <= set(raw.qrels["train"]) and moved.isdisjoint(ds.qrels["train"])
