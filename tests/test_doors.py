"""One door per stage: the CLI command (which `dvc.yaml` runs) and the KFP component reach the same
``hardneg.stages.<stage>_stage`` function with the same data, params and output folder.

The stage functions are replaced by recorders; the arguments of both calls are bound to the real function's
signature and compared by name."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import hardneg.stages as stages
from hardneg.config import load_params
from hardneg.settings import Settings, settings

pytestmark = pytest.mark.adapter

REPO = Path(__file__).resolve().parents[1]
LINEAGE = {"data_version": "abc123.dir", "git_commit": "feedface", "params_hash": "p0"}

EMBED_ENTRY = {
    "model": "m",
    "backend": "torch",
    "precision": "fp32",
    "dim": 8,
    "n_docs": 1,
    "n_queries": 1,
    "model_fingerprint": "f",
    "timing": {"corpus_s": 0.1, "queries_s": 0.1, "corpus_docs_per_s": 10, "corpus_chunks_cached": 0},
}
PARITY = {
    "kind": "bi-encoder",
    "fp32": {"score": "cosine", "max_abs_diff": 1e-6, "threshold": 1e-4},
    "int8": {"max_abs_diff": 1e-3, "skipped": "no dev set"},
    "sample": {"pairs": 4},
    "served_variant": {"served": "fp32", "policy": "auto"},
}
# what each recorder returns: enough for the CLI's table and the component's metadata
RESULTS = {
    "validate_stage": {
        "data_version": "v",
        "stats": {},
        "warnings": 0,
        "report": {"failures": [], "warnings": [], "stats": {}, "success": True},
    },
    "embed_stage": {"manifest": {"entries": [EMBED_ENTRY]}, "slug": "m", "fingerprint": "f", "dim": 8},
    "reduce_stage": {
        "models": ["m"],
        "part_dims": [8],
        "input_dim": 8,
        "n_components": 4,
        "explained_variance_kept": 0.9,
        "fit_rows": 1,
        "n_docs": 1,
        "n_queries": 1,
        "seconds": 0.1,
    },
    "retrieve_stage": {
        "name": "hybrid",
        "bm25_weight": 0.3,
        "top_k": 100,
        "queries": {"dev": 2, "test": 2},
        "splits": {"carved": False},
    },
    "mine_stage": {"policy": "paper", "split": "train", "pairs": 3, "pairs_without_negative": 0},
    "train_stage": {"kind": "bi-encoder", "steps": 2, "best_dev_mrr@10": 0.5},
    "evaluate_stage": {"gate_passed": True, "first_stage": "hybrid"},
    "export_stage": {"export_dir": "x", "parity": PARITY, "metadata": {"version": "v1"}},
}


class Art:
    def __init__(self, path: Path):
        self.path, self.metadata = str(path), {}

    def log_metric(self, key, value) -> None:
        pass


@pytest.fixture()
def recorders(monkeypatch):
    calls: dict[str, list[dict]] = {}
    for name, result in RESULTS.items():
        real = getattr(stages, name)

        def fake(*args, _name=name, _real=real, _result=result, **kwargs):
            bound = inspect.signature(_real).bind(*args, **kwargs)
            calls.setdefault(_name, []).append(dict(bound.arguments))
            return json.loads(json.dumps(_result))

        monkeypatch.setattr(stages, name, fake)
    monkeypatch.setattr(stages, "summary_markdown", lambda s: "")
    return calls


def _same(a: dict, b: dict, names: tuple[str, ...]) -> None:
    for n in names:
        va, vb = a[n], b[n]
        if isinstance(va, str | Path) or isinstance(vb, str | Path):
            va, vb = str(va), str(vb)
        if isinstance(va, list):
            va, vb = [str(x) for x in va], [str(x) for x in vb]
        assert va == vb, (n, va, vb)


def test_cli_and_component_reach_the_same_stage_function(recorders, tmp_path, monkeypatch):
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump({"train": {"max_steps": 3}, "mine": {"policy": "paper"}}))
    params = load_params(pfile)
    pj, lj = json.dumps(params), json.dumps(LINEAGE)
    data, red, emb, ret, neg, model, ev, exp = (
        tmp_path / n for n in ("data", "red", "emb", "ret", "neg", "model", "eval", "export")
    )
    (data / "qrels").mkdir(parents=True)
    (model / "config.json").parent.mkdir()
    (model / "config.json").write_text("{}")
    cli = [
        ["validate", str(data)],
        ["embed", "--data-dir", str(data), "--out", str(emb), "--no-progress"],
        ["reduce", "--emb-dir", str(emb), "--out", str(red)],
        ["retrieve", "--data-dir", str(data), "--reduced-dir", str(red), "--out", str(ret)],
        [
            "mine",
            "--data-dir",
            str(data),
            "--reduced-dir",
            str(red),
            "--retrieved-dir",
            str(ret),
            "--out",
            str(neg),
            "--no-progress",
        ],
        [
            "train",
            "--data-dir",
            str(data),
            "--retrieved-dir",
            str(ret),
            "--negatives",
            str(neg),
            "--out",
            str(model),
        ],
        [
            "evaluate",
            "--data-dir",
            str(data),
            "--retrieved-dir",
            str(ret),
            "--model-dir",
            str(model),
            "--out",
            str(ev),
        ],
        [
            "export",
            "--data-dir",
            str(data),
            "--retrieved-dir",
            str(ret),
            "--model-dir",
            str(model),
            "--evaluation",
            str(ev),
            "--out",
            str(exp),
        ],
    ]
    from hardneg.cli import app

    for args in cli:
        res = CliRunner().invoke(app, ["-c", str(pfile), *args])
        assert res.exit_code == 0, (args, res.output)

    from components.embed import embed
    from components.evaluate import evaluate
    from components.export import export_onnx
    from components.mine import mine
    from components.reduce import reduce
    from components.retrieve import retrieve
    from components.train import train
    from components.validate import validate_data

    A = Art
    validate_data.python_func(A(data), pj, lj, A(tmp_path / "report.md"))
    embed.python_func(A(data), pj, lj, {"model": {"name": "m"}, "shard": 0, "num_shards": 1}, A(emb))
    reduce.python_func([A(emb)], pj, lj, A(red), A(tmp_path / "m1"))
    retrieve.python_func(A(data), A(red), pj, lj, A(ret), A(tmp_path / "m1b"))
    mine.python_func(A(data), A(red), A(ret), pj, lj, A(neg), A(tmp_path / "m2"))
    train.python_func(A(data), A(ret), A(neg), pj, lj, A(model), A(tmp_path / "m3"))
    evaluate.python_func(A(data), A(ret), A(model), pj, lj, A(ev), A(tmp_path / "m4"), A(tmp_path / "r4"))
    monkeypatch.setattr(stages, "served_evaluation_stage", lambda *a, **k: {})
    export_onnx.python_func(
        A(data), A(ret), A(model), A(ev), pj, lj, "v1", A(exp), A(tmp_path / "s5"), A(tmp_path / "m5")
    )

    compared = {
        "validate_stage": ("data_dir", "settings"),
        "embed_stage": ("data_dir", "settings", "out_dir"),
        "reduce_stage": ("emb_dirs", "settings", "out_dir"),
        "retrieve_stage": ("data_dir", "reduced_dir", "settings", "out_dir"),
        "mine_stage": ("data_dir", "reduced_dir", "retrieved_dir", "settings", "out_dir"),
        "train_stage": ("data_dir", "retrieved_dir", "mined_dir", "settings", "out_dir"),
        "evaluate_stage": ("data_dir", "retrieved_dir", "model_dir", "settings", "out_dir"),
        "export_stage": ("data_dir", "retrieved_dir", "model_dir", "evaluation_dir", "settings", "out_dir"),
    }
    typed = settings(params)
    for name, names in compared.items():
        assert len(recorders[name]) == 2, name  # once by the CLI, once by the component
        cli_call, component_call = recorders[name]
        _same(cli_call, component_call, names)
        # typed settings built at both doors (json round trip included), with the same params dict underneath
        for call in (cli_call, component_call):
            assert isinstance(call["settings"], Settings), name
            assert call["settings"] == typed and call["settings"].params == typed.params, name


def test_every_dvc_stage_runs_the_cli_command_of_its_name():
    """dvc.yaml's third door: each stage's cmd is `hardneg <stage>`, so it reaches the same function."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    for name, stage in dvc["stages"].items():
        assert stage["cmd"].split()[:2] == ["hardneg", name], name
        assert hasattr(stages, f"{name}_stage"), name


def test_a_full_disk_inside_a_library_is_one_line_not_a_traceback(monkeypatch, tmp_path):
    """Any command: an OSError for lack of space (raised by KFP, torch, onnx...) is a clear one-line error."""
    import errno

    from hardneg.cli import app

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "red" / "corpus.npy"))

    monkeypatch.setattr(stages, "reduce_stage", full)
    res = CliRunner().invoke(app, ["reduce", "--emb-dir", str(tmp_path), "--out", str(tmp_path / "red")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "Traceback" not in text
    assert "no space left writing" in text and "corpus.npy" in text and "free disk space" in text
    monkeypatch.setattr(stages, "reduce_stage", lambda *a, **k: 1 / 0)  # other errors are not disguised
    res = CliRunner().invoke(app, ["reduce", "--emb-dir", str(tmp_path), "--out", str(tmp_path / "red")])
    assert isinstance(res.exception, ZeroDivisionError)
