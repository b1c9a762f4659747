"""Bi-encoder fine-tuning (hardneg.biencoder) on the tiny fixture with the tiny BERT: batch construction and masking,
the loss, the labels it reads, determinism, learning, outputs."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from hardneg.biencoder import (
    BiEncoderConfig,
    BiEncoderScorer,
    TrainingSet,
    batch_plan,
    contrastive_loss,
    encode,
    load_biencoder,
    train_biencoder,
    training_set,
)
from hardneg.config import default_params
from hardneg.data import load_dataset
from hardneg.errors import ConfigError, HardnegError
from hardneg.model_card import ModelCard, read_card

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ds(tiny_data_dir):
    return load_dataset(tiny_data_dir)


def cfg(model_dir, **kw) -> BiEncoderConfig:
    base = {
        "base_model": str(model_dir),
        "max_length": 64,
        "max_steps": 12,
        "queries_per_step": 8,
        "negatives_per_query": 1,
        "lr": 1e-3,
        "bf16": False,
        "seed": 5,
        "torch_threads": None,
        "tune": "both",
        "trainable_layers": None,
    }
    both = {**base, **kw}
    none = {k: None for k, v in both.items() if v is None}  # from_params ignores None overrides
    return BiEncoderConfig.from_params(default_params(), **both).replace(**none)


def hand_rows(ds, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    docs = sorted(ds.corpus)
    rows = []
    for q, pos in sorted(ds.split_qrels("train").items()):
        pool = [d for d in docs if d not in pos]
        rows.append({"query_id": q, "positive_id": sorted(pos)[0], "negative_ids": list(rng.choice(pool, 3))})
    return rows


def test_batch_masks_documents_that_are_positives_of_the_query():
    ts = TrainingSet(["q1", "q2"], {"q1": ["d1", "d2"], "q2": ["d2"]}, {"q1": ["n1"], "q2": []}, {})
    for seed in range(20):
        qids, docs, targets, masks = batch_plan(ts, 2, 1, np.random.default_rng(seed), [])
        assert sorted(qids) == ["q1", "q2"]
        i1, i2 = qids.index("q1"), qids.index("q2")
        assert docs[targets[i2]] == "d2"
        assert "n1" in docs and len(docs) == len(set(docs))
        if docs[targets[i1]] == "d1":  # d2 is in the batch as q2's target: a positive of q1, so masked for q1
            assert [docs[j] for j in masks[i1]] == ["d2"]
        else:  # q1 and q2 share the target d2: nothing else to mask
            assert masks[i1] == []
        assert masks[i2] == []  # d1 is not a positive of q2: it is one of q2's in-batch negatives


def test_contrastive_loss_ignores_masked_documents():
    # seeded: with the global RNG (whatever earlier tests left) ~17% of draws give the masked document a softmax
    # weight so small that masking it changes the loss by < 1e-5 relative, and the last assertion failed
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(3, 4, generator=g), dim=-1)
    loss = contrastive_loss(q, d, [0, 1], [[2], []], scale=10.0)
    logits = 10.0 * q @ d.T
    manual = (-torch.log_softmax(logits[0, :2], 0)[0] - torch.log_softmax(logits[1], 0)[1]) / 2
    assert float(loss) == pytest.approx(float(manual), rel=1e-5)
    assert float(contrastive_loss(q, d, [0, 1], [[], []], 10.0)) != pytest.approx(float(manual), rel=1e-5)


def test_training_set_reads_only_train_labels(ds):
    rows = hand_rows(ds)
    ts = training_set(ds, rows, "train")
    other = copy.copy(ds)
    other.qrels = {"train": ds.qrels["train"]}  # no dev/test labels at all
    ts2 = training_set(other, rows, "train")
    assert (ts.query_ids, ts.positives, ts.negatives) == (ts2.query_ids, ts2.positives, ts2.negatives)
    assert set(ts.query_ids) == set(ds.split_qrels("train"))
    # in-batch only, and the paper's triplet reading that drops queries without a mined negative
    assert all(not v for v in training_set(ds, None, "train").negatives.values())
    some = rows[: len(rows) // 2]
    dropped = training_set(ds, some, "train", drop_without_negative=True)
    assert set(dropped.query_ids) == {r["query_id"] for r in some}
    with pytest.raises(HardnegError, match="drop_without_negative"):
        training_set(ds, None, "train", drop_without_negative=True)


def _train_mrr(model, ds) -> float:
    qrels = ds.split_qrels("train")
    doc_ids = sorted(ds.corpus)
    D = encode(model, [ds.corpus[d].full_text for d in doc_ids], bf16=False)
    qids = sorted(qrels)
    Q = encode(model, [ds.queries[q].text for q in qids], bf16=False)
    rr = []
    for i, q in enumerate(qids):
        order = np.argsort(-(D @ Q[i]))[:10]
        hits = [r for r, j in enumerate(order) if doc_ids[j] in qrels[q]]
        rr.append(1.0 / (hits[0] + 1) if hits else 0.0)
    return float(np.mean(rr))


def test_training_is_deterministic_learns_and_writes_a_bi_encoder_folder(ds, tiny_model_dir, tmp_path):
    rows = hand_rows(ds)
    before = _train_mrr(load_biencoder(tiny_model_dir), ds)
    a = train_biencoder(ds, rows, tmp_path / "a", cfg(tiny_model_dir, max_steps=30))
    b = train_biencoder(ds, rows, tmp_path / "b", cfg(tiny_model_dir, max_steps=30))
    ma = json.loads((a / "train_metrics.json").read_text())
    mb = json.loads((b / "train_metrics.json").read_text())
    assert ma["steps"] == 30 and ma["stopped_by"] == "max_steps"
    assert ma["loss_curve"] == mb["loss_curve"]  # same data + params + seed = same model
    assert read_card(a) == ModelCard("bi-encoder", 64, str(tiny_model_dir), "both", "self")
    with pytest.raises(HardnegError, match="has no model card"):  # a bare folder is no longer a cross-encoder
        read_card(tiny_model_dir)
    tuned = load_biencoder(a)
    after = _train_mrr(tuned, ds)
    assert after > before + 0.05, (before, after)
    # the scorer returns the cosines of the saved model
    q, d = ds.queries[rows[0]["query_id"]].text, ds.corpus[rows[0]["positive_id"]].full_text
    s = BiEncoderScorer(tuned, bf16=False).score_pairs([(q, d)])
    want = float(encode(tuned, [q], bf16=False)[0] @ encode(tuned, [d], bf16=False)[0])
    assert s[0] == pytest.approx(want, abs=1e-5)
    # another seed gives another model
    c = train_biencoder(ds, rows, tmp_path / "c", cfg(tiny_model_dir, max_steps=30, seed=6))
    assert json.loads((c / "train_metrics.json").read_text())["loss_curve"] != ma["loss_curve"]


def test_time_cap_stops_at_a_known_step_and_is_recorded(ds, tiny_model_dir, tmp_path, monkeypatch):
    """A fake clock that moves 60 s per loss computation: a 2.5 min cap binds before step 4 of 12, whatever the
    machine's speed; the schedule keeps its max_steps horizon."""
    import types

    import hardneg.biencoder as be

    now = [0.0]

    def loss_and_tick(*a, **kw):
        now[0] += 60.0
        return contrastive_loss(*a, **kw)

    monkeypatch.setattr(be, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(be, "contrastive_loss", loss_and_tick)
    out = train_biencoder(ds, None, tmp_path / "m", cfg(tiny_model_dir, max_steps=12, time_cap_min=2.5))
    m = json.loads((out / "train_metrics.json").read_text())
    assert m["stopped_by"] == "time_cap" and m["steps"] == 3 and len(m["loss_curve"]) == 3


def test_config_from_params_checks_keys_and_types():
    p = default_params()
    c = BiEncoderConfig.from_params(p)
    assert c.max_steps == p["train"]["max_steps"] and c.lr == p["train"]["bi_encoder"]["lr"]
    assert c.max_length == p["train"]["bi_encoder"]["max_length"]
    p["train"]["bi_encoder"]["learning_rate"] = 1e-5
    with pytest.raises(ConfigError, match="learning_rate"):
        BiEncoderConfig.from_params(p)
    p = default_params()
    p["train"]["bi_encoder"]["queries_per_step"] = "32"
    with pytest.raises(ConfigError, match="queries_per_step"):
        BiEncoderConfig.from_params(p)
    p = default_params()
    p["train"]["bi_encoder"]["queries_per_step"] = 1
    with pytest.raises(ConfigError, match="in-batch"):
        BiEncoderConfig.from_params(p)


def test_trainer_configs_are_views_of_the_typed_train_section_not_copies():
    """#17 item 4: BiEncoderConfig / CrossEncoderConfig hold the typed ``train`` section (no field copied from it);
    a change goes through dataclasses.replace of the sections, is checked again, and a typo is named."""
    import dataclasses

    from hardneg.settings import TRAIN_COMMON, settings
    from hardneg.train import CrossEncoderConfig

    p = default_params()
    t = settings(p).train
    for cls, sec in ((BiEncoderConfig, t.bi_encoder), (CrossEncoderConfig, t.cross_encoder)):
        c = cls.from_params(p)
        assert [f.name for f in dataclasses.fields(cls)] == ["train", "bf16"]
        assert c.train == t  # the section itself, as typed by hardneg.settings
        flat = c.flat()
        assert set(flat) == set(TRAIN_COMMON) | {"bf16"} | {f.name for f in dataclasses.fields(sec)}
        assert all(getattr(c, k) == v for k, v in flat.items())
        c2 = c.replace(max_steps=7, lr=0.5)
        assert (c2.max_steps, c2.lr, c2.train.max_steps, getattr(c2.train, cls.SECTION).lr) == (
            7,
            0.5,
            7,
            0.5,
        )
        assert (c.max_steps, c.lr) == (t.max_steps, sec.lr)  # the original is unchanged (frozen)
        with pytest.raises(ConfigError, match="learning_rate"):
            c.replace(learning_rate=1e-5)
        with pytest.raises(AttributeError):
            _ = c.learning_rate
    with pytest.raises(ConfigError, match="in-batch"):  # every copy is checked, not only from_params
        BiEncoderConfig.from_params(p).replace(queries_per_step=1)
    assert BiEncoderConfig.from_params(p).replace(trainable_layers=None).trainable_layers is None


def test_query_tuning_keeps_the_document_vectors_and_learns(ds, tiny_model_dir, tmp_path):
    from hardneg.biencoder import document_vectors

    c = cfg(tiny_model_dir, max_steps=30, tune="query")
    D, ids = document_vectors(ds, c, tmp_path / "cache")
    D2, _ = document_vectors(ds, c, tmp_path / "cache")  # second call: from the cache, identical
    assert np.array_equal(D, D2)
    with pytest.raises(HardnegError, match="doc_vectors"):
        train_biencoder(ds, hand_rows(ds), tmp_path / "x", c)
    out = train_biencoder(ds, hand_rows(ds), tmp_path / "q", c, doc_vectors=(D, ids))
    card = read_card(out)
    assert card.tune == "query" and card.document_encoder == str(tiny_model_dir)
    tuned = load_biencoder(out)
    qrels = ds.split_qrels("train")
    qids = sorted(qrels)

    def mrr(Q):
        rr = []
        for i, q in enumerate(qids):
            order = np.argsort(-(D @ Q[i]))[:10]
            hits = [r for r, j in enumerate(order) if ids[j] in qrels[q]]
            rr.append(1.0 / (hits[0] + 1) if hits else 0.0)
        return float(np.mean(rr))

    texts = [ds.queries[q].text for q in qids]
    before = mrr(encode(load_biencoder(tiny_model_dir), texts, bf16=False))
    after = mrr(encode(tuned, texts, bf16=False))
    assert after > before + 0.05, (before, after)
