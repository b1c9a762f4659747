"""Dense (faiss) and BM25 (bm25s) first stage, and the run format."""

from __future__ import annotations

import numpy as np
import pytest

from hardneg.data import Document
from hardneg.embed import l2_normalize
from hardneg.errors import HardnegError
from hardneg.retrieve import bm25_search, dense_search, load_run, run_from_arrays, save_run

pytestmark = pytest.mark.unit


def _vecs(n, d=16, seed=0):
    return l2_normalize(np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32))


def test_flat_search_is_exact_and_batching_does_not_change_results():
    D, Q = _vecs(500), _vecs(37, seed=1)
    s, i = dense_search(Q, D, 10)
    ref = np.argsort(-(Q @ D.T), axis=1, kind="stable")[:, :10]
    assert np.array_equal(i, ref)
    assert np.allclose(s, np.take_along_axis(Q @ D.T, ref, axis=1), atol=1e-5)
    s2, i2 = dense_search(Q, D, 10, batch_size=4)
    assert np.array_equal(i, i2) and np.allclose(s, s2)
    assert (np.diff(s, axis=1) <= 1e-6).all()


def test_k_larger_than_corpus_and_ties_are_ordered_by_index():
    D = np.stack([np.array([1.0, 0.0], np.float32)] * 3 + [np.array([0.0, 1.0], np.float32)])
    s, i = dense_search(np.array([[1.0, 0.0]], np.float32), D, 10)
    assert i.tolist() == [[0, 1, 2, 3]] and s.shape == (1, 4)


@pytest.mark.parametrize("index", ["ivf", "hnsw"])
def test_approximate_indexes_have_high_recall(index):
    D, Q = _vecs(2000, 8), _vecs(50, 8, seed=2)
    _, exact = dense_search(Q, D, 10)
    _, approx = dense_search(Q, D, 10, index=index)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall > 0.8


def test_dense_search_rejects_mismatched_widths():
    with pytest.raises(HardnegError, match="width"):
        dense_search(_vecs(3, 4), _vecs(10, 8), 2)


def test_bm25_search_and_run_roundtrip(tmp_path):
    corpus = {
        "a": Document("a", "mitochondria produce ATP in the cell", title="Energy"),
        "b": Document("b", "the stock market fell sharply"),
        "c": Document("c", "zebrafish regenerate heart tissue"),
    }
    run = bm25_search(
        corpus, {"q1": "mitochondria ATP", "q2": "zebrafish heart", "q3": "nothing matches"}, k=3
    )
    assert list(run["q1"])[0] == "a" and list(run["q2"])[0] == "c"
    assert run["q3"] == {}  # zero-score documents are not hits
    assert "b" not in run["q1"]
    save_run(run, tmp_path)
    assert load_run(tmp_path) == run


def test_run_from_arrays_drops_missing_hits():
    run = run_from_arrays(np.array([[0.9, -np.inf]]), np.array([[1, -1]]), ["q"], ["d0", "d1"])
    assert run == {"q": {"d1": pytest.approx(0.9)}}
