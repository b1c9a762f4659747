"""Bring your own corpus (`hardneg pipeline run --data DIR`): the preparation step (validate, place under data/,
`dvc add`, the commit hint) in a throwaway git + DVC project, without running the pipeline; and a broken DIR is
refused before anything is copied or run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hardneg.config import load_params

pytestmark = pytest.mark.adapter

REPO = Path(__file__).resolve().parents[1]
QUIET_ENV = ("TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS", "HF_HUB_DISABLE_PROGRESS_BARS")


def _sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True, env=env).stdout


def _dvc() -> str:
    exe = (
        Path(sys.executable).parent / "dvc"
    )  # the venv's dvc (the project's .venv, or the one running pytest)
    return str(exe) if exe.exists() else "dvc"


@pytest.fixture()
def project(tmp_path, tiny_data_dir) -> Path:
    """A committed git + DVC project whose data/ (data.dvc) holds the fixture corpus as data/tiny."""
    proj = tmp_path / "proj"
    shutil.copytree(tiny_data_dir, proj / "data" / "tiny")
    _sh(["git", "init", "-q"], proj)
    _sh(["git", "config", "user.email", "t@example.com"], proj)
    _sh(["git", "config", "user.name", "t"], proj)
    _sh([_dvc(), "init", "-q"], proj)
    _sh([_dvc(), "add", "-q", "data"], proj)
    _sh(["git", "add", "-A"], proj)
    _sh(["git", "commit", "-qm", "data"], proj)
    return proj


def _md5(proj: Path) -> str:
    return yaml.safe_load((proj / "data.dvc").read_text())["outs"][0]["md5"]


def _my_corpus(tmp_path: Path, tiny_data_dir: Path) -> Path:
    src = tmp_path / "elsewhere" / "mycorpus"
    shutil.copytree(tiny_data_dir, src)
    queries = src / "queries.jsonl"  # a different corpus than data/tiny: one query text changed
    lines = queries.read_text().splitlines()
    lines[0] = lines[0].replace('"text": "', '"text": "my ', 1)
    queries.write_text("\n".join(lines) + "\n")
    return src


def test_prepare_places_dvc_adds_and_tells_what_to_commit(project, tmp_path, tiny_data_dir):
    from pipelines.byo import commit_hint, prepare_corpus

    params = load_params(REPO / "params.yaml")
    src = _my_corpus(tmp_path, tiny_data_dir)
    before = _md5(project)
    p = prepare_corpus(src, params, project)
    assert p.data_dir == "data/mycorpus" and p.action == "copied" and not p.pushed
    assert (project / "data" / "mycorpus" / "queries.jsonl").read_text() == (
        src / "queries.jsonl"
    ).read_text()
    assert p.previous_version == before and p.data_version == _md5(project) != before
    assert p.to_commit == ["data.dvc"]  # data/ was already git-ignored by the first `dvc add`
    hint = commit_hint(project, p)
    assert hint[0].startswith("record the data this run used: git add data.dvc && git commit")
    assert any("`dvc push`" in line for line in hint)
    assert "misses every KFP cache entry" in hint[-1]  # data.dvc changed: the tree is dirty

    # a rerun naming the placed folder: nothing copied, same data version
    again = prepare_corpus(project / "data" / "mycorpus", params, project)
    assert again.action == "in place" and again.data_dir == "data/mycorpus"
    assert again.data_version == p.data_version and not again.changed

    # after the commit: nothing to add, no dirty-tree line
    _sh(["git", "add", "data.dvc"], project)
    _sh(["git", "commit", "-qm", "data: mycorpus"], project)
    same = prepare_corpus(src, params, project)
    assert same.action == "unchanged" and same.to_commit == []
    assert not any("git add" in line or "KFP cache" in line for line in commit_hint(project, same))


def test_pipeline_run_data_runs_on_the_placed_corpus(project, tmp_path, tiny_data_dir, monkeypatch):
    from typer.testing import CliRunner

    import hardneg.cli as cli
    import pipelines.run

    for var in QUIET_ENV:  # the CLI sets them (setdefault) for a quiet terminal: restore after the test
        monkeypatch.setenv(var, os.environ.get(var, "x"))
    seen = {}

    def fake_run_local(params, repo, caching=True, verbose=False):
        seen["data_dir"], seen["verbose"] = params["data"]["dir"], verbose
        return {"fake": True}

    monkeypatch.setattr(pipelines.run, "run_local", fake_run_local)
    monkeypatch.setattr(cli, "_print_pipeline_summary", lambda s: None)
    monkeypatch.chdir(project)
    src = _my_corpus(tmp_path, tiny_data_dir)
    cfg = str(REPO / "params.yaml")
    res = CliRunner().invoke(
        cli.app, ["-c", cfg, "pipeline", "run", "--data", str(src)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert seen == {"data_dir": "data/mycorpus", "verbose": False}
    assert "validated (" in res.output and "copied to data/mycorpus" in res.output
    assert "git add data.dvc && git commit" in res.output
    assert "misses every KFP cache entry" in res.output


def test_pipeline_run_refuses_a_broken_corpus_before_anything_runs(
    project, tmp_path, tiny_data_dir, monkeypatch
):
    from typer.testing import CliRunner

    import hardneg.cli as cli
    import pipelines.run

    for var in QUIET_ENV:
        monkeypatch.setenv(var, os.environ.get(var, "x"))

    def must_not_run(*a, **kw):
        raise AssertionError("the pipeline must not start on a corpus that failed validation")

    monkeypatch.setattr(pipelines.run, "run_local", must_not_run)
    monkeypatch.chdir(project)
    bad = tmp_path / "broken"
    shutil.copytree(tiny_data_dir, bad)
    corpus = bad / "corpus.jsonl"
    lines = corpus.read_text().splitlines()
    corpus.write_text("\n".join(lines + [lines[0]]) + "\n")  # duplicate document id
    before = (project / "data.dvc").read_text()
    cfg = str(REPO / "params.yaml")
    res = CliRunner().invoke(
        cli.app, ["-c", cfg, "pipeline", "run", "--data", str(bad)], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 1
    assert "validation of" in res.output and "corpus.jsonl" in res.output  # the validation table
    assert "failed validation" in res.output and "nothing was copied" in res.output
    assert not (project / "data" / "broken").exists()
    assert (project / "data.dvc").read_text() == before
    assert _sh(["git", "status", "--porcelain"], project) == ""
