"""Components as adapters: each KFP component's Python body calls the right ``hardneg.stages`` function with the
artifact paths and parameters it was given, pins the lineage, and copies the results onto its outputs.

The stage functions are replaced by recorders (the stages themselves are tested on real data elsewhere, and the
whole pipeline end to end in test_pipeline.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import hardneg.stages as stages
from hardneg.settings import settings

pytestmark = pytest.mark.adapter

LINEAGE = {"data_version": "abc123.dir", "git_commit": "feedface", "params_hash": "p0"}
PARAMS = {"serve": {"model_name": "m"}, "data": {"train_split": "train"}}
TYPED = settings(PARAMS)  # what each component hands its stage: the typed settings, built at its door


class Art:
    """What a KFP artifact gives a component body: a path, a metadata dict and, for Metrics, log_metric."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.metadata: dict = {}
        self.logged: dict = {}

    def log_metric(self, key: str, value: float) -> None:
        self.logged[key] = value


@pytest.fixture()
def record(monkeypatch):
    """record(name, result) replaces hardneg.stages.<name>; the calls land in the returned list."""
    monkeypatch.delenv("HARDNEG_DATA_VERSION", raising=False)
    monkeypatch.delenv("HARDNEG_GIT_COMMIT", raising=False)

    def _record(name: str, result):
        calls: list = []

        def fake(*args, **kwargs):
            calls.append(
                (args, kwargs, os.environ.get("HARDNEG_DATA_VERSION"), os.environ.get("HARDNEG_GIT_COMMIT"))
            )
            return result

        monkeypatch.setattr(stages, name, fake)
        return calls

    return _record


def _lineage_was_pinned(call) -> None:
    assert call[2:] == ("abc123.dir", "feedface")


def test_fetch_data(record, tmp_path):
    from components.fetch import fetch_data

    calls = record("fetch_data_stage", {"data_version": "abc123.dir", "files": 4})
    data = Art(tmp_path / "data")
    assert fetch_data.python_func("/repo", "HEAD", "data/scifact", "abc123.dir", data) == "abc123.dir"
    assert calls[0][0] == ("/repo", "HEAD", "data/scifact", data.path)
    assert calls[0][1] == {"expected_version": "abc123.dir"}
    assert data.metadata == {"data_version": "abc123.dir", "files": 4}


def test_validate_data(record, tmp_path):
    from components.validate import validate_data

    calls = record("validate_stage", {"data_version": "abc123.dir", "warnings": 1})
    data, report = Art(tmp_path / "d"), Art(tmp_path / "r")
    assert validate_data.python_func(data, json.dumps(PARAMS), json.dumps(LINEAGE), report) == "abc123.dir"
    assert calls[0][0] == (data.path, TYPED, report.path)
    _lineage_was_pinned(calls[0])
    assert report.metadata == {**LINEAGE, "warnings": 1}


def test_embed(record, tmp_path):
    from components.embed import embed

    item = {"model": "tiny", "shard": 1, "shards": 2}
    calls = record("embed_stage", {"fingerprint": "f00d", "docs": 10})
    data, out = Art(tmp_path / "d"), Art(tmp_path / "e")
    assert embed.python_func(data, json.dumps(PARAMS), json.dumps(LINEAGE), item, out) == "f00d"
    assert calls[0][0] == (data.path, TYPED, item, out.path)
    _lineage_was_pinned(calls[0])
    assert out.metadata == {**LINEAGE, "fingerprint": "f00d", "docs": 10}


def test_reduce(record, tmp_path):
    from components.reduce import reduce

    meta = {"models": ["a", "b"], "n_components": 42, "explained_variance_kept": 0.95}
    calls = record(
        "reduce_stage", {**meta, "part_dims": [3, 4], "seconds": 1.5}
    )  # the component keeps the headline
    shards = [Art(tmp_path / "e0"), Art(tmp_path / "e1")]
    reduced, metrics = Art(tmp_path / "r"), Art(tmp_path / "m")
    assert reduce.python_func(shards, json.dumps(PARAMS), json.dumps(LINEAGE), reduced, metrics) == 42
    assert calls[0][0] == ([shards[0].path, shards[1].path], TYPED, reduced.path)
    _lineage_was_pinned(calls[0])
    assert reduced.metadata == {**LINEAGE, **meta}
    assert metrics.logged == {"n_components": 42, "explained_variance_kept": 0.95}  # numbers only
    assert json.loads(Path(metrics.path).read_text()) == meta  # written: KFP's local cache needs the file


def test_retrieve(record, tmp_path):
    from components.retrieve import retrieve

    summary = {
        "name": "hybrid",
        "bm25_weight": 0.3,
        "top_k": 100,
        "queries": {"dev": 20, "test": 30},
        "splits": {},
    }
    calls = record("retrieve_stage", summary)
    data, reduced, ret, metrics = (Art(tmp_path / n) for n in ("d", "r", "t", "m"))
    assert (
        retrieve.python_func(data, reduced, json.dumps(PARAMS), json.dumps(LINEAGE), ret, metrics) == "hybrid"
    )
    assert calls[0][0] == (data.path, reduced.path, TYPED, ret.path)
    _lineage_was_pinned(calls[0])
    assert ret.metadata["first_stage"] == "hybrid" and ret.metadata["queries/test"] == 30
    assert metrics.logged == {"bm25_weight": 0.3, "top_k": 100, "queries/dev": 20, "queries/test": 30}


def test_mine(record, tmp_path):
    from components.mine import mine

    calls = record("mine_stage", {"policy": "hybrid", "pairs": 7, "negatives_per_pair_mean": 2.5})
    data, reduced, ret, neg, metrics = (Art(tmp_path / n) for n in ("d", "r", "t", "n", "m"))
    assert mine.python_func(data, reduced, ret, json.dumps(PARAMS), json.dumps(LINEAGE), neg, metrics) == 7
    assert calls[0][0] == (data.path, reduced.path, ret.path, TYPED, neg.path)
    _lineage_was_pinned(calls[0])
    assert neg.metadata["policy"] == "hybrid" and neg.metadata["git_commit"] == "feedface"
    assert metrics.logged == {"pairs": 7, "negatives_per_pair_mean": 2.5}


def test_train(record, tmp_path):
    from components.train import train

    calls = record("train_stage", {"steps": 10, "best_dev_mrr@10": 0.5, "best_step": 6})
    data, ret, neg, model, metrics = (Art(tmp_path / n) for n in ("d", "t", "n", "mo", "me"))
    assert train.python_func(data, ret, neg, json.dumps(PARAMS), json.dumps(LINEAGE), model, metrics) == 0.5
    assert calls[0][0] == (data.path, ret.path, neg.path, TYPED, model.path)
    _lineage_was_pinned(calls[0])
    assert model.metadata["best_step"] == 6 and model.metadata["data_version"] == "abc123.dir"


@pytest.mark.parametrize("gate", [True, False])
def test_evaluate_returns_the_gate(record, tmp_path, gate):
    from components.evaluate import evaluate

    summary = {"gate_passed": gate, "served_mrr@10": 0.6, "first_stage_mrr@10": 0.59}
    calls = record("evaluate_stage", summary)
    names = ("d", "t", "mo", "ev", "me", "rep")
    data, ret, model, evaluation, metrics, report = (Art(tmp_path / n) for n in names)
    pj, lj = json.dumps(PARAMS), json.dumps(LINEAGE)
    assert evaluate.python_func(data, ret, model, pj, lj, evaluation, metrics, report) is gate
    args = calls[0][0]
    assert args == (data.path, ret.path, model.path, TYPED, evaluation.path)  # its own output artifact
    _lineage_was_pinned(calls[0])
    assert "gate_passed" not in metrics.logged and metrics.logged["served_mrr@10"] == 0.6
    assert "0.6" in Path(report.path).read_text()


def test_export_then_evaluates_what_it_exported(record, tmp_path):
    from components.export import export_onnx

    parity = {"passed": True, "served_variant": {"policy": "auto", "served": "int8"}}
    exp_calls = record("export_stage", {"export_dir": str(tmp_path / "o"), "parity": parity})
    served_calls = record("served_evaluation_stage", {"variant": "int8", "fusion/mrr@10": 0.64})
    names = ("d", "t", "mo", "ev", "o", "se", "s")
    data, ret, model, evaluation, onnx, served_eval, served = (Art(tmp_path / n) for n in names)
    pj, lj = json.dumps(PARAMS), json.dumps(LINEAGE)
    out = export_onnx.python_func(data, ret, model, evaluation, pj, lj, "v7", onnx, served_eval, served)
    assert out == str(tmp_path / "o")
    assert exp_calls[0][0] == (data.path, ret.path, model.path, evaluation.path, TYPED, onnx.path)
    assert exp_calls[0][1] == {"version": "v7"}
    assert served_calls[0][0] == (data.path, ret.path, onnx.path, TYPED, served_eval.path)
    _lineage_was_pinned(exp_calls[0])
    assert onnx.metadata == {**LINEAGE, "version": "v7", "parity": parity}
    assert served.logged == {"fusion/mrr@10": 0.64}


def test_register(record, tmp_path):
    from components.register import register

    calls = record("register_stage", {"release_dir": "/rel/v7", "canary_percent": 10})
    onnx, manifests = Art(tmp_path / "o"), Art(tmp_path / "m")
    assert register.python_func(onnx, json.dumps(PARAMS), "v7", manifests) == "/rel/v7"
    assert calls[0][0] == (onnx.path, TYPED, "v7", manifests.path)
    assert manifests.metadata == {"release_dir": "/rel/v7", "canary_percent": 10}
