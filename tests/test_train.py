"""Reranker training on the tiny fixture with the tiny BERT: losses, padding, learning, determinism, outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hardneg.config import default_params
from hardneg.data import load_dataset
from hardneg.errors import ConfigError, HardnegError
from hardneg.evaluate import combine, evaluate_run, rerank_scores
from hardneg.model_card import ModelCard, read_card
from hardneg.scoring import score_pairs
from hardneg.train import (
    build_groups,
    group_loss,
    load_negatives,
    lr_factor,
    sample_negatives,
    train_reranker,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ds(tiny_data_dir):
    return load_dataset(tiny_data_dir)


def hand_negatives(ds, n_neg: int = 7, seed: int = 0) -> list[dict]:
    """Random corpus documents as negatives for every train (query, positive) pair."""
    rng = np.random.default_rng(seed)
    docs = sorted(ds.corpus)
    rows = []
    for q, pos in sorted(ds.split_qrels("train").items()):
        pool = [d for d in docs if d not in pos]
        for p in sorted(pos):
            negs = [pool[i] for i in rng.choice(len(pool), n_neg, replace=False)]
            rows.append({"query_id": q, "positive_id": p, "negative_ids": negs, "policy": "random"})
    return rows


def tiny_params(model_dir, **train) -> dict:
    p = default_params()
    p["train"].update(
        {
            "kind": "cross-encoder",
            "base_model": str(model_dir),
            "max_steps": 40,
            "time_cap_min": 0,
            "eval_every": 0,
            "bf16": False,
            "seed": 7,
            "eval_depth": 10,
            "torch_threads": None,
        }
    )
    p["train"]["cross_encoder"].update(
        {
            "loss": "listwise",
            "group_size": 4,
            "queries_per_step": 4,
            "lr": 1e-3,
            "warmup_ratio": 0.1,
            "max_length": 64,
        }
    )
    for k, v in train.items():
        (p["train"]["cross_encoder"] if k in p["train"]["cross_encoder"] else p["train"])[k] = v
    p["retrieve"]["rerank_depth"] = 10
    return p


def group_mrr(model_dir, ds, rows) -> float:
    """MRR@10 of ranking each train row's [positive + negatives] with the model (the fixture's train MRR)."""
    from sentence_transformers import CrossEncoder

    ce = CrossEncoder(str(model_dir), device="cpu")
    run = {
        f"{r['query_id']}|{r['positive_id']}": {d: 0.0 for d in [r["positive_id"], *r["negative_ids"]]}
        for r in rows
    }
    qrels = {f"{r['query_id']}|{r['positive_id']}": {r["positive_id"]: 1} for r in rows}
    qtext = {k: ds.queries[k.split("|")[0]].text for k in run}
    dtext = {d: ds.corpus[d].full_text for docs in run.values() for d in docs}
    cand = {k: list(v) for k, v in run.items()}
    scores = rerank_scores(
        lambda pairs: score_pairs(ce.model, ce.tokenizer, pairs, 64, 32, False), qtext, dtext, cand
    )
    return evaluate_run(combine(run, scores, 10), qrels, ("mrr@10",)).mean["mrr@10"]


def test_group_losses_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 1.0]])
    lw = group_loss(logits, "listwise").item()
    assert lw == pytest.approx(-np.log(np.exp(2) / (np.exp(2) + 1 + np.exp(1))), rel=1e-6)
    bce = group_loss(logits, "bce").item()
    sp = lambda x: np.log1p(np.exp(x))  # noqa: E731 - softplus
    assert bce == pytest.approx((sp(-2.0) + sp(0.0) + sp(1.0)) / 3, rel=1e-6)
    # hinge: relu(1 - 2 + 0) = 0, relu(1 - 2 + 1) = 0 -> 0; with margin 2: (0 + 1) / 2
    assert group_loss(logits, "margin", 1.0).item() == pytest.approx(0.0)
    assert group_loss(logits, "margin", 2.0).item() == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        group_loss(logits, "nope")


def test_lr_schedule_warmup_and_decay():
    f = [lr_factor(s, 2, 10) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0)
    assert f[2] == pytest.approx(1.0) and f[9] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(f[1:], f[2:], strict=False))


def test_sample_negatives_pads_from_the_available_ones():
    rng = np.random.default_rng(0)
    out = sample_negatives(["a", "b"], 5, rng)
    assert len(out) == 5 and out[:2] == ["a", "b"] and set(out) == {"a", "b"}
    sub = sample_negatives(list("abcdefgh"), 3, rng)
    assert len(sub) == 3 and len(set(sub)) == 3 and set(sub) <= set("abcdefgh")


def test_build_groups_drops_rows_without_negatives_and_checks_ids(ds):
    q, pos = next(iter(sorted(ds.split_qrels("train").items())))
    p = sorted(pos)[0]
    other = next(d for d in sorted(ds.corpus) if d != p)
    rows = [
        {"query_id": q, "positive_id": p, "negative_ids": [p, other, other]},
        {"query_id": q, "positive_id": p, "negative_ids": []},
    ]
    groups, stats = build_groups(ds, rows)
    assert groups == [(q, p, [other])]
    assert stats["dropped_no_negatives"] == 1 and stats["negatives_equal_to_positive"] == 1
    with pytest.raises(HardnegError, match="not in the corpus"):
        build_groups(ds, [{"query_id": q, "positive_id": p, "negative_ids": ["no-such-doc"]}])


def test_load_negatives_reports_bad_rows(tmp_path):
    f = tmp_path / "negatives.jsonl"
    f.write_text('{"query_id": "1", "positive_id": "2", "negative_ids": ["3"]}\n{"query_id": "1"}\n')
    with pytest.raises(HardnegError, match="negatives.jsonl:2"):
        load_negatives(f)


@pytest.mark.parametrize("loss", ["listwise", "margin"])
def test_training_lowers_loss_and_improves_train_mrr(ds, tiny_model_dir, tmp_path, loss):
    rows = hand_negatives(ds, n_neg=3)
    params = tiny_params(tiny_model_dir, loss=loss, max_steps=80)
    from sentence_transformers import CrossEncoder

    torch.manual_seed(7)
    untrained = tmp_path / "untrained"
    CrossEncoder(str(tiny_model_dir), num_labels=1, max_length=64, device="cpu").save_pretrained(
        str(untrained)
    )
    out = train_reranker(ds, rows, tmp_path / "m", params, progress=False)
    m = json.loads((out / "train_metrics.json").read_text())
    curve = m["loss_curve"]
    assert m["steps"] == 80 and len(curve) == 80
    assert np.mean(curve[-10:]) < np.mean(curve[:10])
    before, after = group_mrr(untrained, ds, rows), group_mrr(out, ds, rows)
    assert after > before + 0.1, (before, after)
    for f in ("config.json", "model.safetensors", "tokenizer.json", "lineage.json", "train_metrics.json"):
        assert (out / f).exists(), f
    lin = json.loads((out / "lineage.json").read_text())
    assert len(lin["inputs"]["negatives_sha256"]) == 64 and lin["params_hash"] != "none"
    # the cross-encoder trainer writes its model card too (a folder without one is refused downstream)
    card = read_card(out)
    assert card == ModelCard(
        "cross-encoder", params["train"]["cross_encoder"]["max_length"], str(tiny_model_dir)
    )
    assert card.score == "sigmoid" and card.tune is None and card.document_encoder is None


def test_training_is_deterministic_with_a_seed(ds, tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    rows = hand_negatives(ds)
    params = tiny_params(tiny_model_dir, max_steps=6, group_size=8)
    a = train_reranker(ds, rows, tmp_path / "a", params, progress=False)
    b = train_reranker(ds, rows, tmp_path / "b", params, progress=False)
    la = json.loads((a / "train_metrics.json").read_text())["loss_curve"]
    lb = json.loads((b / "train_metrics.json").read_text())["loss_curve"]
    assert la == lb
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train_reranker(
        ds,
        rows,
        tmp_path / "c",
        tiny_params(tiny_model_dir, max_steps=6, group_size=8, seed=8),
        progress=False,
    )
    assert json.loads((c / "train_metrics.json").read_text())["loss_curve"] != la


def test_dev_evaluation_keeps_the_best_checkpoint(ds, tiny_model_dir, tmp_path):
    from hardneg.retrieve import bm25_search

    rows = hand_negatives(ds, n_neg=3)
    dev_q = {q: ds.queries[q] for q in ds.split_qrels("dev")}
    dev_run = bm25_search(ds.corpus, dev_q, 20)
    params = tiny_params(tiny_model_dir, max_steps=20, eval_every=5, group_size=4, eval_at_start=True)
    out = train_reranker(ds, rows, tmp_path / "m", params, dev_candidates=dev_run, progress=False)
    m = json.loads((out / "train_metrics.json").read_text())
    steps = [d["step"] for d in m["dev_curve"]]
    assert steps == [0, 5, 10, 15, 20]
    best = max(m["dev_curve"], key=lambda d: (d["mrr@10"], d["step"]))
    assert m["best_step"] == best["step"] and m["best_dev_mrr@10"] == pytest.approx(best["mrr@10"])
    # the saved model is the best checkpoint: re-measuring it gives the best dev value
    from sentence_transformers import CrossEncoder

    from hardneg.train import _dev_mrr

    ce = CrossEncoder(str(out), device="cpu")
    again = _dev_mrr(ce.model, ce.tokenizer, ds, dev_run, ds.split_qrels("dev"), 10, 64, False, 32)
    assert again == pytest.approx(best["mrr@10"], abs=1e-6)


class StepClock:
    """A fake ``time.perf_counter`` that moves only when a training step computes its loss (60 s a step), so the
    time cap binds at a known step whatever the machine's speed or the number of clock reads per step."""

    def __init__(self, seconds_per_step: float = 60.0):
        self.now, self.dt = 0.0, seconds_per_step

    def perf_counter(self) -> float:
        return self.now

    def tick(self, fn):
        def wrapped(*a, **kw):
            self.now += self.dt
            return fn(*a, **kw)

        return wrapped


def test_max_steps_decides_the_length_and_the_time_cap_is_a_recorded_safety_net(
    ds, tiny_model_dir, tmp_path, monkeypatch
):
    import types

    import hardneg.train as train_mod

    rows = hand_negatives(ds, n_neg=3)
    # no cap binding: exactly max_steps steps, one loss value each, recorded as stopped by max_steps
    a = train_reranker(ds, rows, tmp_path / "a", tiny_params(tiny_model_dir, max_steps=6), progress=False)
    ma = json.loads((a / "train_metrics.json").read_text())
    assert ma["steps"] == 6 and len(ma["loss_curve"]) == 6 and ma["horizon"] == 6
    assert (
        ma["stopped_by"] == "max_steps" and ma["pairs"] == 6 * 4 * 4
    )  # steps x queries_per_step x group_size
    # a 2.5 min cap with 1 min a step (fake clock): the cap binds before step 4 of 10, and is recorded
    clock = StepClock(60.0)
    monkeypatch.setattr(train_mod, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(train_mod, "group_loss", clock.tick(train_mod.group_loss))
    capped = train_reranker(
        ds, rows, tmp_path / "c", tiny_params(tiny_model_dir, max_steps=10, time_cap_min=2.5), progress=False
    )
    mc = json.loads((capped / "train_metrics.json").read_text())
    assert mc["steps"] == 3 and len(mc["loss_curve"]) == 3 and mc["stopped_by"] == "time_cap"
    assert mc["horizon"] == 10  # the schedule is never refitted to the clock (reproducible)
    # the capped run is the first 3 steps of the uncapped one (same seed, same lr schedule for a horizon of 10)
    monkeypatch.undo()
    ref = train_reranker(ds, rows, tmp_path / "r", tiny_params(tiny_model_dir, max_steps=10), progress=False)
    assert json.loads((ref / "train_metrics.json").read_text())["loss_curve"][:3] == mc["loss_curve"]


def test_training_rejects_unusable_inputs(ds, tiny_model_dir, tmp_path):
    q, pos = next(iter(sorted(ds.split_qrels("train").items())))
    rows = [{"query_id": q, "positive_id": sorted(pos)[0], "negative_ids": []}]
    with pytest.raises(HardnegError, match="no usable training groups"):
        train_reranker(ds, rows, tmp_path / "m", tiny_params(tiny_model_dir), progress=False)
    with pytest.raises(ConfigError, match="loss"):
        train_reranker(
            ds, hand_negatives(ds), tmp_path / "m", tiny_params(tiny_model_dir, loss="hinge"), progress=False
        )
