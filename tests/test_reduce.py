"""Concatenation + PCA: variance target, fixed dims, weights, persistence, the stage's files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hardneg.artifacts import atomic_save_npy, atomic_write_json
from hardneg.embed import l2_normalize
from hardneg.errors import ConfigError, HardnegError
from hardneg.reduce import (
    Projection,
    choose_n_components,
    concat_parts,
    fit_projection,
    load_reduced,
    reduce_embeddings,
)

pytestmark = pytest.mark.unit


def _data(n=400, seed=0):
    """Two 'models' (8-d and 6-d) whose vectors mostly vary along 3 shared directions."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 3)) * np.array([5.0, 3.0, 2.0])
    a = l2_normalize(z @ rng.normal(size=(3, 8)) + 0.05 * rng.normal(size=(n, 8)) + 3.0)
    b = l2_normalize(z @ rng.normal(size=(3, 6)) + 0.05 * rng.normal(size=(n, 6)) - 2.0)
    return a, b


def test_choose_n_components():
    r = np.array([0.5, 0.3, 0.15, 0.05])
    assert choose_n_components(r, 0.95, None) == 3
    assert choose_n_components(r, 0.8, None) == 2
    assert choose_n_components(r, 1.0, None) == 4
    assert choose_n_components(r, 0.95, 1) == 1  # a fixed dimension wins
    with pytest.raises(ConfigError):
        choose_n_components(r, 1.5, None)
    with pytest.raises(ConfigError):
        choose_n_components(r, None, 9)


def test_weighted_concat_cosine_is_the_weighted_mean_of_model_cosines():
    a, b = _data(10)
    x = concat_parts([a, b], [1.0, 3.0])
    cos_concat = (x[0] @ x[1]) / (np.linalg.norm(x[0]) * np.linalg.norm(x[1]))
    assert cos_concat == pytest.approx((1.0 * a[0] @ a[1] + 3.0 * b[0] @ b[1]) / 4.0, abs=1e-6)
    with pytest.raises(HardnegError, match="row counts"):
        concat_parts([a, b[:5]], [1, 1])
    with pytest.raises(ConfigError):
        concat_parts([a, b], [1, -1])


def test_pca_keeps_variance_target_and_preserves_neighbours(tmp_path):
    a, b = _data()
    proj = fit_projection([a, b], [1.0, 1.0], ["a", "b"], variance=0.95)
    assert proj.input_dim == 14 and 2 <= proj.n_components <= 4
    cum = np.cumsum(proj.explained_variance_ratio)
    assert cum[proj.n_components - 1] >= 0.95 and cum[proj.n_components - 2] < 0.95
    X = proj.transform([a, b])
    assert X.shape == (400, proj.n_components) and np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-5)
    # nearest neighbours in PCA space agree with the full (centred) concatenation for most points
    full = l2_normalize(concat_parts([a, b], [1, 1]) - proj.mean)
    nn_full = np.argsort(-(full @ full.T), axis=1)[:, 1]
    nn_pca = np.argsort(-(X @ X.T), axis=1)[:, 1]
    assert (nn_full == nn_pca).mean() > 0.8
    # persistence: the loaded projection maps new (query) vectors identically
    proj.save(tmp_path / "pca.npz")
    back = Projection.load(tmp_path / "pca.npz")
    assert back.models == ["a", "b"] and back.part_dims == [8, 6]
    assert np.allclose(back.transform([a[:5], b[:5]]), X[:5], atol=1e-6)
    with pytest.raises(HardnegError, match="widths"):
        back.transform([b, a])


def test_fixed_components_sample_and_identity():
    a, b = _data()
    p1 = fit_projection([a, b], [1, 1], ["a", "b"], n_components=5, fit_sample=100, seed=3)
    p2 = fit_projection([a, b], [1, 1], ["a", "b"], n_components=5, fit_sample=100, seed=3)
    assert p1.n_components == 5 and np.array_equal(p1.components, p2.components)  # deterministic, signs fixed
    ident = fit_projection([a, b], [1, 1], ["a", "b"], variance=None, n_components=None)
    X = ident.transform([a, b])
    assert X.shape == (400, 14) and np.allclose(X, l2_normalize(concat_parts([a, b], [1, 1])), atol=1e-6)


def _fake_embed_dir(root, parts, doc_ids, query_ids, weights):
    models = []
    for i, ((D, Q), w) in enumerate(zip(parts, weights, strict=True)):
        slug = f"m{i}"
        atomic_save_npy(root / slug / "corpus.npy", D)
        atomic_save_npy(root / slug / "queries.npy", Q)
        atomic_write_json(root / slug / "ids.json", {"doc_ids": doc_ids, "query_ids": query_ids})
        atomic_write_json(root / slug / "manifest.json", {"model": slug, "weight": w, "dim": D.shape[1]})
        models.append(slug)
    atomic_write_json(root / "manifest.json", {"models": models, "corpus_sha256": "abc"})


def test_reduce_stage_files(tmp_path):
    a, b = _data(300)
    qa, qb = a[:7], b[:7]
    doc_ids = [f"d{i}" for i in range(300)]
    _fake_embed_dir(tmp_path / "emb", [(a, qa), (b, qb)], doc_ids, [f"q{i}" for i in range(7)], [1.0, 2.0])
    st = reduce_embeddings(
        tmp_path / "emb", {"reduce": {"variance": 0.9, "fit_sample": 1000}}, tmp_path / "red"
    )
    D, ids, Q, qids = load_reduced(tmp_path / "red")
    assert D.shape == (300, st["n_components"]) and Q.shape == (7, st["n_components"]) and ids == doc_ids
    assert st["weights"] == [1.0, 2.0] and st["explained_variance_kept"] >= 0.9
    assert len(st["cumulative_explained_variance"]) == 14
    # queries equal to documents land on the same PCA vectors
    assert np.allclose(Q, D[:7], atol=1e-6)
    assert json.loads((tmp_path / "red" / "reduce.json").read_text())["n_components"] == st["n_components"]
    assert (tmp_path / "red" / "pca.npz").exists() and (tmp_path / "red" / "lineage.json").exists()


def test_reduce_refuses_models_embedded_from_different_data(tmp_path):
    a, b = _data(50)
    _fake_embed_dir(
        tmp_path / "emb", [(a, a[:2]), (b, b[:2])], [f"d{i}" for i in range(50)], ["q0", "q1"], [1, 1]
    )
    atomic_write_json(
        tmp_path / "emb" / "m1" / "ids.json",
        {"doc_ids": [f"x{i}" for i in range(50)], "query_ids": ["q0", "q1"]},
    )
    with pytest.raises(HardnegError, match="different data"):
        reduce_embeddings(tmp_path / "emb", {"reduce": {}}, tmp_path / "red")
    with pytest.raises(HardnegError, match="hardneg embed"):
        reduce_embeddings(tmp_path / "nothing", {"reduce": {}}, tmp_path / "red")
