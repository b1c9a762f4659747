"""The pipeline's integration test: compile, load the compiled YAML back, run it locally end to end on the fixture
corpus (tiny models, a throwaway git + DVC repo); plus adapter tests and the submit request."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hardneg.config import load_params

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


def _sh(cmd: list[str], cwd: Path) -> None:
    subprocess.run(
        cmd,
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DVC_NO_ANALYTICS": "1"},
    )


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory, tiny_model_dir) -> tuple[Path, dict]:
    """A git + DVC project holding the fixture corpus as data/tiny, with params for tiny models."""
    proj = tmp_path_factory.mktemp("proj")
    shutil.copytree(REPO / "tests" / "fixtures" / "tiny", proj / "data" / "tiny")
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_model_dir, proj / "models" / name)
    dvc = str(REPO / ".venv" / "bin" / "dvc") if (REPO / ".venv" / "bin" / "dvc").exists() else "dvc"
    _sh(["git", "init", "-q"], proj)
    _sh(["git", "config", "user.email", "t@example.com"], proj)
    _sh(["git", "config", "user.name", "t"], proj)
    _sh([dvc, "init", "-q"], proj)
    _sh([dvc, "add", "-q", "data"], proj)
    _sh(["git", "add", "-A"], proj)
    _sh(["git", "commit", "-qm", "data"], proj)
    params = load_params(REPO / "params.yaml")
    params["data"]["dir"] = "data/tiny"
    m = {"max_length": 64, "batch_size": 16, "query_prompt": "", "document_prompt": "", "weight": 1.0}
    params["embed"].update(
        cache_dir=str(proj / ".cache"),
        shards=2,
        models=[
            {"name": str(proj / "models" / "tiny-a"), **m},
            {"name": str(proj / "models" / "tiny-b"), **m},
        ],
    )
    params["mine"].update(top_k=50, num_negatives=3)
    params["retrieve"].update(top_k=50, rerank_depth=10)
    params["train"].update(
        base_model=str(proj / "models" / "tiny-a"),
        max_steps=4,
        eval_every=2,
        time_cap_min=5,
    )
    params["train"]["bi_encoder"].update(max_length=64, queries_per_step=4)
    params["export"].update(
        parity_int8_max_mrr_drop=1.0
    )  # a random tiny model: int8 ranking noise is not the subject here
    # the quality gate keeps the shipped threshold (params.yaml pipeline.min_gain_mrr10, 0.0): on the fixture the
    # dev-tuned fusion weight is 0, served = first stage, gain 0.0, so the gate passes at it (and fails above it:
    # test_run_local_stops_before_export_when_the_quality_gate_fails)
    params["pipeline"].update(pipeline_root=str(proj / "local_outputs"))
    params["release"].update(k8s_dir=str(REPO / "k8s"), releases_dir=str(proj / "releases"))
    return proj, params


def test_compiled_pipeline_has_the_stages_and_cluster_settings(tmp_path, tiny_project):
    from pipelines.run import compile_pipeline

    proj, params = tiny_project
    out = compile_pipeline(params, tmp_path / "pipeline.yaml", proj)
    spec, platform = list(yaml.safe_load_all(out.read_text()))
    execs = set(spec["deploymentSpec"]["executors"])
    for stage in (
        "fetch-data",
        "validate-data",
        "embed",
        "reduce",
        "mine",
        "train",
        "evaluate",
        "export-onnx",
        "register",
        "run-summary",
    ):
        assert f"exec-{stage}" in execs, stage
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s["exec-embed"]["pvcMount"][0]["mountPath"] == "/cache"
    # train, evaluate and export read the embed stage's document vectors (tune: query) from the same cache
    for stage in ("train", "evaluate", "export-onnx"):
        assert k8s[f"exec-{stage}"]["pvcMount"][0]["mountPath"] == "/cache", stage
    assert k8s["exec-fetch-data"]["secretAsEnv"][0]["secretName"] == "hardneg-dvc-remote"
    train_res = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert train_res["resourceCpuRequest"] == "8"
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    cluster_params = json.loads(defaults["params_json"]["defaultValue"])
    assert cluster_params["embed"]["cache_dir"] == "/cache/embeddings"
    assert defaults["data_version"]["defaultValue"].endswith(".dir")


def test_compiled_yaml_runs_locally_end_to_end_then_hits_the_cache(tmp_path, tiny_project):
    from kfp import components, local

    from pipelines.run import compile_pipeline, pipeline_arguments, summarize_run

    proj, params = tiny_project
    args = pipeline_arguments(params, proj)
    pkg = compile_pipeline(params, tmp_path / "pipeline.yaml", proj)
    root = Path(params["pipeline"]["pipeline_root"])
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=True,
        raise_on_error=True,
    )
    loaded = components.load_component_from_file(str(pkg))
    loaded(**args)
    runs = sorted(root.glob("hardneg-*"))
    assert len(runs) == 1
    s = summarize_run(root, runs[0], 0.0, args)
    assert s["served_from_cache"] is False
    assert s["metrics"]["gate_min_gain"] == load_params(REPO / "params.yaml")["pipeline"]["min_gain_mrr10"]
    assert (
        s["metrics"]["gain_mrr@10"] >= s["metrics"]["gate_min_gain"] and s["metrics"]["gate_passed"] is True
    )
    exported = Path(s["onnx_model"])
    meta = json.loads((exported / "metadata.json").read_text())
    # what was evaluated on test is what the export serves (auto policy: int8 if it passed its gate, else fp32)
    assert meta["served_variant_policy"] == params["serve"]["variant"]
    assert meta["served_variant"] == ("int8" if meta["parity"]["int8_passed"] else "fp32")
    assert s["served_metrics"]["variant"] == meta["served_variant"] and "fusion/mrr@10" in s["served_metrics"]
    # all / seen / unseen with the baseline beside each, for the torch evaluation and the served ONNX one
    m, sm = s["metrics"], s["served_metrics"]
    assert m["n/seen"] + m["n/unseen"] > 0 and m["n/seen"] == sm["n/seen"] and m["n/unseen"] == sm["n/unseen"]
    for part in ("seen", "unseen"):
        if m[f"n/{part}"]:
            for src in (m, sm):
                assert {f"first_stage/{part}/mrr@10", f"fusion/{part}/mrr@10"} <= set(src), (
                    part,
                    sorted(src),
                )
    if (
        params["train"]["kind"] == "bi-encoder"
    ):  # the tuned query tower alone over the whole corpus, by part too
        assert {"alone/mrr@10", "alone/seen/mrr@10"} <= set(m) or not m["n/seen"], sorted(m)
    assert meta["lineage"]["data_version"] == args["data_version"]
    assert (exported / "model.onnx").exists() and (exported / "model.int8.onnx").exists()
    manifests = Path(s["release"])
    assert (manifests / "kustomization.yaml").exists()
    summary_md = next(runs[0].glob("**/run-summary/summary"))
    assert "SUCCEEDED" in summary_md.read_text()
    # second run: nothing changed -> every task from the cache, no new run folder, the same outputs
    loaded(**args)
    assert sorted(root.glob("hardneg-*")) == runs
    again = summarize_run(root, None, 0.0, args)
    assert again["served_from_cache"] is True and again["onnx_model"] == s["onnx_model"]


def test_failing_validation_stops_the_run_before_embedding(tmp_path, tiny_project):
    from kfp import local

    from pipelines.hardneg_pipeline import build_pipeline
    from pipelines.run import pipeline_arguments

    proj, params = tiny_project
    bad = tmp_path / "badproj"
    shutil.copytree(proj, bad, ignore=shutil.ignore_patterns("local_outputs", ".cache"))
    corpus = bad / "data" / "tiny" / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines + [lines[0]]) + "\n")  # duplicate document id
    dvc = str(REPO / ".venv" / "bin" / "dvc")
    _sh([dvc, "add", "-q", "data"], bad)
    p = json.loads(json.dumps(params))
    p["pipeline"]["pipeline_root"] = str(tmp_path / "lo")
    args = pipeline_arguments(p, bad)
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(tmp_path / "lo"),
        enable_caching=False,
        raise_on_error=True,
    )
    with pytest.raises(RuntimeError) as e:
        build_pipeline(p)(**args)
    msg = re.sub(r"\x1b\[[0-9;]*m", "", str(e.value))
    assert "validate-data" in msg
    run = next((tmp_path / "lo").glob("hardneg-*"))
    assert not list(run.glob("**/embed")), "embedding must not start after a failed validation"
    assert "FAILED" in next(run.glob("**/run-summary/summary")).read_text()


def test_submit_builds_the_run_request(tiny_project):
    from pipelines.run import submit

    proj, params = tiny_project

    class FakeClient:
        def __init__(self):
            self.calls = []

        def create_experiment(self, name):
            self.calls.append(("experiment", name))
            return type("E", (), {"experiment_id": "exp-1"})()

        def create_run_from_pipeline_package(self, path, arguments, run_name, experiment_name):
            self.calls.append(("run", Path(path).read_text()[:40], arguments, run_name, experiment_name))
            return type("R", (), {"run_id": "run-1"})()

        def create_recurring_run(self, **kw):
            self.calls.append(("recurring", kw))
            return type("R", (), {"recurring_run_id": "rr-1"})()

    c = FakeClient()
    res = submit(params, "http://kfp.invalid", client=c, repo=proj)
    assert res == {"run_id": "run-1", "experiment": "hardneg"}
    _, head, arguments, run_name, exp = c.calls[1]
    assert head.startswith("# PIPELINE DEFINITION")
    assert arguments["dvc_repo"] == params["pipeline"]["cluster"]["git_repo"]
    assert json.loads(arguments["params_json"])["embed"]["cache_dir"] == "/cache/embeddings"
    assert run_name == f"hardneg-{arguments['model_version']}"
    res = submit(params, "http://kfp.invalid", client=c, repo=proj, recurring_cron="0 0 3 * * *")
    assert res["recurring_run_id"] == "rr-1"
    assert c.calls[-1][1]["cron_expression"] == "0 0 3 * * *"


def test_run_local_stops_before_export_when_the_quality_gate_fails(tiny_project, tmp_path, capsys):
    """The gate-fails branch end to end, through the CLI's entry point (run_local) in a fresh pipeline root (so the
    first call always executes): evaluate reports the failed gate, export-onnx and register are skipped, the exit
    handler still runs and records the run; the executor chatter is in the log file, not on the terminal; a second
    call is served from the cache. Lighter than the main run (one embedding model and shard, paper mining, 2
    steps, dense first stage)."""
    from pipelines.run import run_local

    proj, base = tiny_project
    params = json.loads(json.dumps(base))
    root = tmp_path / "local_outputs"
    params["pipeline"].update(pipeline_root=str(root), min_gain_mrr10=1.0)  # unreachable: MRR@10 <= 1
    params["embed"].update(shards=1, models=base["embed"]["models"][:1])
    params["mine"].update(policy="paper")  # faiss on the reduced vectors: no model to load in the mine task
    params["train"].update(max_steps=2, eval_every=0)
    params["evaluate"].update(first_stage="dense", fusion_weights=[0.0, 1.0])
    first = run_local(params, proj)
    shown = capsys.readouterr().out
    assert first["served_from_cache"] is False and first["run_dir"] is not None
    m = first["metrics"]
    assert m["gate_min_gain"] == 1.0 and m["gate_passed"] is False and m["gain_mrr@10"] < 1.0
    run = Path(first["run_dir"])
    assert "Quality gate: **FAILED (model not exported)**" in (run / "evaluate" / "report").read_text()
    assert first["onnx_model"] is None and first["release"] is None and first["served_metrics"] is None
    assert not (run / "export-onnx").exists() and not (run / "register").exists()
    summary = (run / "run-summary" / "summary").read_text()
    assert summary.startswith("# hardneg run: SUCCEEDED") and first["lineage"]["data_version"] in summary
    assert re.search(r"condition-\d+ +skipped \(condition evaluated to False\)", shown), shown
    assert "export-onnx" not in shown and "register" not in shown
    log = Path(first["log"])
    assert log.parent == root / "logs" and "Got executor_input" in log.read_text()
    assert "Got executor_input" not in shown and "metadata=" not in shown and "UserWarning" not in shown
    assert "train" in shown and "pipeline 'hardneg'" in shown  # the quiet terminal (tests/test_runlog.py)
    second = run_local(params, proj)
    assert second["served_from_cache"] is True and second["run_dir"] is None and Path(second["log"]).is_file()
    assert second["metrics"] == m and second["onnx_model"] is None
    assert sorted(root.glob("hardneg-*")) == [run]


def test_the_run_summary_prints_the_tuned_model_alone_over_the_whole_corpus(capsys):
    """The `make run` table names each system for what it computes; the evaluate stage's ``alone`` (the tuned query
    tower retrieving from the whole corpus) has its own row, apart from the same model reordering the candidates."""
    from hardneg import cli

    m = {
        "first_stage": "hybrid",
        "first_stage/mrr@10": 0.5,
        "alone/mrr@10": 0.4321,
        "rerank/mrr@10": 0.6543,
        "fusion/mrr@10": 0.7,
        "n/seen": 1,
        "n/unseen": 1,
    }
    lineage = {"data_version": "d", "git_commit": "c", "params_hash": "p"}
    cli._print_pipeline_summary({"metrics": m, "seconds": 1.0, "model_version": "v", "lineage": lineage})
    out = capsys.readouterr().out
    assert "0.4321" in out and "0.6543" in out and "whole" in out and "reordering" in out


def test_the_run_summary_prints_the_cross_validated_dev_line_from_the_evaluate_metrics(capsys, repo_root):
    """metrics.json ``gate_cv`` (the served choice re-made without each dev fold) reaches the pipeline's headline
    numbers and the summary prints it, by part; without it (gate_cv_folds 0, or skipped) no line is printed."""
    from hardneg import cli
    from hardneg.config import load_params
    from hardneg.settings import settings
    from hardneg.stages import headline

    row = lambda a, s, u: {"all": {"mrr@10": a}, "seen": {"mrr@10": s}, "unseen": {"mrr@10": u}}  # noqa: E731
    metrics = {
        "systems": {"first_stage": {"mrr@10": 0.5}, "fusion": {"mrr@10": 0.6}},
        "gate_cv": {"folds": 5, "first_stage": row(0.61, 0.62, 0.63), "served": row(0.64, 0.651, 0.6012)},
    }
    h = headline(metrics, settings(load_params(repo_root / "params.yaml")))
    assert h["dev_cv/served/unseen/mrr@10"] == 0.6012 and h["dev_cv/first_stage/all/mrr@10"] == 0.61
    lineage = {"data_version": "d", "git_commit": "c", "params_hash": "p"}
    cli._print_pipeline_summary({"metrics": h, "seconds": 1.0, "model_version": "v", "lineage": lineage})
    out = " ".join(capsys.readouterr().out.split())
    assert "served 0.6400 vs no training 0.6100 (seen 0.6510 vs 0.6200, unseen 0.6012 vs 0.6300)" in out
    del metrics["gate_cv"]
    cli._print_pipeline_summary(
        {"metrics": headline(metrics, settings(load_params(repo_root / "params.yaml"))), "seconds": 1.0,
         "model_version": "v", "lineage": lineage}
    )  # fmt: skip
    assert "cross-validated" not in capsys.readouterr().out
