"""`hardneg release`: canary / promote / rollback overlays carrying the model's lineage; `hardneg lineage` chain."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from hardneg.audit import lineage_chain
from hardneg.errors import HardnegError
from hardneg.lineage import Lineage, sha256_file, write_lineage
from hardneg.release import (
    ANN_DATA_VERSION,
    ANN_GIT_COMMIT,
    ANN_METRICS,
    ANN_PARAMS_HASH,
    LABEL_MODEL_VERSION,
    ReleaseSettings,
    lineage_annotations,
    load_history,
    read_model_lineage,
    release,
    rollout_state,
)

pytestmark = pytest.mark.adapter

REPO = Path(__file__).resolve().parents[1]
needs_kubectl = (
    pytest.mark.kubectl
)  # skipped with an install hint without kubectl; fails under CI=true (conftest)


def _lineage(i: int, data: str = "c0c0f55923ff16f37dc14e52410c3b04.dir") -> Lineage:
    return Lineage(
        data_version=data,
        git_commit=f"{i:040x}",
        params_hash=f"{i:016x}",
        inputs={"model_fingerprint": f"fp{i}"},
        extra={"metrics": {"ndcg@10": 0.6 + i / 100, "mrr@10": 0.55, "fusion_weight": 0.7}},
    )


def _export(tmp: Path, name: str, lin: Lineage) -> Path:
    """A fake exported-model folder as hardneg export writes it (only metadata.json matters here)."""
    d = tmp / name
    d.mkdir(parents=True)
    for f in ("model.onnx", "model.int8.onnx", "tokenizer.json"):
        (d / f).write_bytes(b"x")
    meta = {
        "model_name": "hardneg-reranker",
        "opset": 17,
        "fusion": {"weight": 0.7},
        "lineage": lin.to_dict(),
    }
    (d / "metadata.json").write_text(json.dumps(meta))
    return d


@pytest.fixture()
def settings(tmp_path) -> ReleaseSettings:
    return ReleaseSettings(
        k8s_dir=REPO / "k8s",
        releases_dir=tmp_path / "releases",
        overlay="prod",
        image="ghcr.io/hardneg/hardneg-serving",
        canary_percent=10,
        storage_uri={"prod": "s3://models/hardneg/{version}", "dev": "pvc://models/hardneg/{version}"},
        kubernetes_version="1.31",
    )


def _isvc(out: Path) -> dict:
    docs = [d for d in yaml.safe_load_all((out / "manifests.yaml").read_text()) if d]
    (isvc,) = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc


def _storage(isvc: dict) -> str:
    env = isvc["spec"]["predictor"]["containers"][0]["env"]
    return next(e["value"] for e in env if e["name"] == "STORAGE_URI")


def test_lineage_annotations_are_the_lineage():
    lin = _lineage(1)
    assert lineage_annotations(lin) == {
        ANN_DATA_VERSION: "c0c0f55923ff16f37dc14e52410c3b04.dir",
        ANN_GIT_COMMIT: f"{1:040x}",
        ANN_PARAMS_HASH: f"{1:016x}",
        ANN_METRICS: '{"fusion_weight":0.7,"mrr@10":0.55,"ndcg@10":0.61}',
    }
    assert lineage_annotations(Lineage("d", "g", "p"))[ANN_METRICS] == "{}"


def test_read_model_lineage_sources(tmp_path):
    lin = _lineage(2)
    assert read_model_lineage(_export(tmp_path, "exp", lin)) == lin
    trained = tmp_path / "trained"
    write_lineage(trained, lin)
    assert read_model_lineage(trained) == lin  # lineage.json fallback
    (tmp_path / "nometa").mkdir()
    (tmp_path / "nometa" / "metadata.json").write_text(json.dumps({"opset": 17}))
    with pytest.raises(HardnegError, match="no 'lineage' object"):
        read_model_lineage(tmp_path / "nometa")
    (tmp_path / "empty").mkdir()
    with pytest.raises(HardnegError, match="neither metadata.json"):
        read_model_lineage(tmp_path / "empty")
    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / "metadata.json").write_text("{")
    with pytest.raises(HardnegError, match="invalid JSON"):
        read_model_lineage(tmp_path / "badjson")


def test_export_metadata_layout_metrics_and_version(tmp_path, settings, monkeypatch):
    """hardneg export keeps metrics next to the lineage and records a version: both are picked up."""
    monkeypatch.setattr("hardneg.k8s_validate.kubectl_path", lambda: None)
    d = tmp_path / "export"
    d.mkdir()
    lin = Lineage("c0c0f55923ff16f37dc14e52410c3b04.dir", "e" * 40, "1" * 16, {"model_fingerprint": "fp"}, {})
    meta = {"version": "7f3a9c2e11b0", "lineage": lin.to_dict(), "metrics": {"test": {"ndcg@10": 0.66}}}
    (d / "metadata.json").write_text(json.dumps(meta))
    assert read_model_lineage(d).extra["metrics"] == {"test": {"ndcg@10": 0.66}}
    res = release(version=None, model_dir=d, settings=settings)
    assert res.release.version == "7f3a9c2e11b0"
    assert res.release.annotations[ANN_METRICS] == '{"test":{"ndcg@10":0.66}}'
    chain = lineage_chain(d, dvc_file=tmp_path / "absent.dvc")
    assert chain.stages[0].metrics == '{"test":{"ndcg@10":0.66}}'


def test_settings_come_from_params_yaml():
    from hardneg.config import load_params
    from hardneg.errors import ConfigError

    s = ReleaseSettings.from_params(load_params(REPO / "params.yaml"))
    assert s.overlay == "prod" and s.k8s_dir == Path("k8s") and s.releases_dir == Path("k8s/releases")
    assert set(s.storage_uri) == {"dev", "prod"} and all("{version}" in v for v in s.storage_uri.values())
    assert 1 <= s.canary_percent <= 99 and isinstance(s.kubernetes_version, str)
    with pytest.raises(ConfigError, match="unknown key"):
        ReleaseSettings.from_params({"release": {"canary_pct": 5}})


@needs_kubectl
def test_canary_release_carries_the_lineage(tmp_path, settings):
    lin = _lineage(1)
    res = release(
        version="1.0.0",
        model_dir=_export(tmp_path, "m1", lin),
        canary=25,
        image_tag="0.3.1",
        settings=settings,
    )
    out = settings.releases_dir / "1.0.0"
    assert res.out_dir == out and res.rendered and res.documents == 9
    assert {p.name for p in out.iterdir()} == {
        "kustomization.yaml",
        "release-patch.yaml",
        "container-patch.yaml",
        "manifests.yaml",
        "release.json",
    }
    kust = yaml.safe_load((out / "kustomization.yaml").read_text())
    assert (out / kust["resources"][0]).resolve() == (REPO / "k8s" / "overlays" / "prod").resolve()
    assert kust["images"] == [{"name": "ghcr.io/hardneg/hardneg-serving", "newTag": "0.3.1"}]
    assert "&id" not in (out / "kustomization.yaml").read_text()

    isvc = _isvc(out)
    anns = isvc["metadata"]["annotations"]
    assert {k: anns[k] for k in lineage_annotations(lin)} == lineage_annotations(lin)
    assert anns[ANN_DATA_VERSION] == lin.data_version and anns[ANN_GIT_COMMIT] == lin.git_commit
    assert anns[ANN_PARAMS_HASH] == lin.params_hash and json.loads(anns[ANN_METRICS]) == lin.extra["metrics"]
    assert isvc["metadata"]["labels"][LABEL_MODEL_VERSION] == "1.0.0"
    pred = isvc["spec"]["predictor"]
    assert pred["labels"][LABEL_MODEL_VERSION] == "1.0.0"
    assert pred["canaryTrafficPercent"] == 25
    assert pred["containers"][0]["image"] == "ghcr.io/hardneg/hardneg-serving:0.3.1"
    assert _storage(isvc) == "s3://models/hardneg/1.0.0"
    # the overlay's other settings survive the release patches
    assert (
        pred["minReplicas"] == 2
        and pred["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    )
    assert isvc["metadata"]["namespace"] == "hardneg"

    (entry,) = load_history(settings.releases_dir)
    assert entry.version == "1.0.0" and entry.action == "canary" and entry.canary == 25
    assert entry.effective_image == "ghcr.io/hardneg/hardneg-serving:0.3.1"
    assert "first release" in entry.traffic and entry.rolled_out == "1.0.0"
    assert json.loads((out / "release.json").read_text())["annotations"] == lineage_annotations(lin)


@needs_kubectl
def test_promote_then_canary_then_rollback_pins_previous(tmp_path, settings):
    m1, m2 = _export(tmp_path, "m1", _lineage(1)), _export(tmp_path, "m2", _lineage(2))
    release(version="1.0.0", model_dir=m1, settings=settings)
    promoted = release(version="1.0.0", promote=True, settings=settings)
    pred = _isvc(promoted.out_dir)["spec"]["predictor"]
    assert "canaryTrafficPercent" not in pred  # promote removes the field: 100 % to the latest revision
    assert promoted.release.traffic == "100% 1.0.0"
    assert _isvc(promoted.out_dir)["metadata"]["annotations"][ANN_GIT_COMMIT] == f"{1:040x}"  # from history

    canary = release(version="1.1.0", model_dir=m2, canary=10, settings=settings)
    assert canary.release.traffic == "10% 1.1.0, 90% 1.0.0 (rolled-out revision)"
    assert _isvc(canary.out_dir)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    state = rollout_state(load_history(settings.releases_dir), "prod")
    assert state.canary_in_flight and state.current_rolled_out == "1.0.0"

    with pytest.raises(HardnegError, match="would roll back"):
        release(version="1.0.0", rollback=True, settings=settings)
    rb = release(version="1.1.0", rollback=True, settings=settings)
    assert rb.out_dir == settings.releases_dir / "1.0.0"
    assert rb.release.action == "rollback" and rb.release.previous == "1.1.0" and rb.release.canary == 0
    isvc = _isvc(rb.out_dir)
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 0
    assert isvc["metadata"]["labels"][LABEL_MODEL_VERSION] == "1.0.0"
    assert isvc["metadata"]["annotations"][ANN_GIT_COMMIT] == f"{1:040x}"
    assert _storage(isvc) == "s3://models/hardneg/1.0.0"
    assert [r.action for r in load_history(settings.releases_dir)] == [
        "canary",
        "promote",
        "canary",
        "rollback",
    ]


@needs_kubectl
def test_rollback_of_a_promoted_version_rolls_the_previous_out_in_full(tmp_path, settings):
    release(version="1.0.0", model_dir=_export(tmp_path, "m1", _lineage(1)), settings=settings)
    release(
        version="1.1.0", model_dir=_export(tmp_path, "m2", _lineage(2)), image_tag="0.2.0", settings=settings
    )
    release(version="1.1.0", promote=True, settings=settings)
    assert rollout_state(load_history(settings.releases_dir), "prod").rolled_out == ["1.0.0", "1.1.0"]
    rb = release(version=None, rollback=True, settings=settings)
    isvc = _isvc(rb.out_dir)
    assert rb.release.version == "1.0.0" and rb.release.previous == "1.1.0"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]  # canary 0 would pin the bad revision
    # the previous version's image (the overlay default it was released with) and model come back
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == "ghcr.io/hardneg/hardneg-serving:0.1.0"
    assert _storage(isvc) == "s3://models/hardneg/1.0.0"
    assert rollout_state(load_history(settings.releases_dir), "prod").rolled_out == [
        "1.0.0",
        "1.1.0",
        "1.0.0",
    ]
    # a second rollback must not bring back 1.1.0 (it was rolled back), and nothing is older than 1.0.0
    with pytest.raises(HardnegError, match="cannot roll back 1.0.0"):
        release(version=None, rollback=True, settings=settings)


def test_release_argument_errors(tmp_path, settings):
    m1 = _export(tmp_path, "m1", _lineage(1))
    with pytest.raises(HardnegError, match="nothing to roll back"):
        release(version=None, rollback=True, settings=settings)
    with pytest.raises(HardnegError, match="exclusive"):
        release(version="1.0.0", model_dir=m1, promote=True, rollback=True, settings=settings)
    for bad in (0, 100, -5):
        with pytest.raises(HardnegError, match="1..99"):
            release(version="1.0.0", model_dir=m1, canary=bad, settings=settings)
    with pytest.raises(HardnegError, match="--canary applies"):
        release(version="1.0.0", model_dir=m1, canary=5, promote=True, settings=settings)
    for bad_version in ("1.0.0/evil", "-lead", "x" * 64, "has space"):
        with pytest.raises(HardnegError, match="invalid version"):
            release(version=bad_version, model_dir=m1, settings=settings)
    with pytest.raises(HardnegError, match="--version is required"):
        release(version=None, model_dir=m1, settings=settings)
    with pytest.raises(HardnegError, match="--model-dir is required"):
        release(version="1.0.0", settings=settings)
    with pytest.raises(HardnegError, match="no overlay 'staging'"):
        release(version="1.0.0", model_dir=m1, overlay="staging", settings=settings)
    with pytest.raises(HardnegError, match="invalid image tag"):
        release(version="1.0.0", model_dir=m1, image_tag="bad tag", settings=settings)
    with pytest.raises(HardnegError, match="unsupported storage URI"):
        release(version="1.0.0", model_dir=m1, storage_uri="/local/path", settings=settings)
    assert load_history(settings.releases_dir) == []  # nothing recorded by failed calls


@needs_kubectl
def test_dev_overlay_release_goes_to_its_own_folder_and_history(tmp_path, settings):
    m1 = _export(tmp_path, "m1", _lineage(1))
    res = release(version="1.0.0", model_dir=m1, overlay="dev", settings=settings)
    assert res.out_dir == settings.releases_dir / "dev" / "1.0.0"
    isvc = _isvc(res.out_dir)
    assert _storage(isvc) == "pvc://models/hardneg/1.0.0" and isvc["metadata"]["namespace"] == "hardneg-dev"
    assert isvc["spec"]["predictor"]["containers"][0]["image"].endswith(":dev")  # overlay tag kept
    assert rollout_state(load_history(settings.releases_dir), "prod").entries == []


@needs_kubectl
def test_a_patch_that_no_longer_applies_fails_the_release(tmp_path, settings):
    k8s = tmp_path / "k8s"
    shutil.copytree(REPO / "k8s", k8s, ignore=shutil.ignore_patterns("releases"))
    base = k8s / "base" / "inferenceservice.yaml"
    doc = yaml.safe_load(base.read_text())
    env = doc["spec"]["predictor"]["containers"][0]["env"]
    env.insert(0, env.pop(1))  # STORAGE_URI no longer first: the JSON-patch test op must stop the build
    base.write_text(yaml.safe_dump(doc))
    settings = dataclasses.replace(settings, k8s_dir=k8s)
    with pytest.raises(HardnegError, match="kustomize"):
        release(version="1.0.0", model_dir=_export(tmp_path, "m1", _lineage(1)), settings=settings)
    assert load_history(settings.releases_dir) == []
    assert not (settings.releases_dir / "1.0.0").exists()
    assert list(settings.releases_dir.iterdir()) == []  # no staging leftovers


@needs_kubectl
def test_an_invalid_render_leaves_the_previous_release_folder_untouched(tmp_path, settings, monkeypatch):
    from hardneg.k8s_validate import Problem

    release(version="1.0.0", model_dir=_export(tmp_path, "m1", _lineage(1)), settings=settings)
    out = settings.releases_dir / "1.0.0"
    before = {f.name: f.read_text() for f in out.iterdir()}
    monkeypatch.setattr(
        "hardneg.k8s_validate.validate_documents", lambda docs, v: [Problem("x", "Role/r", "boom")]
    )
    with pytest.raises(HardnegError, match="boom"):
        release(version="1.0.0", promote=True, settings=settings)
    assert {f.name: f.read_text() for f in out.iterdir()} == before
    assert [r.action for r in load_history(settings.releases_dir)] == ["canary"]
    assert sorted(p.name for p in settings.releases_dir.iterdir()) == ["1.0.0", "history.json"]


def test_without_kubectl_the_kustomization_is_still_written(tmp_path, settings, monkeypatch):
    monkeypatch.setattr("hardneg.k8s_validate.kubectl_path", lambda: None)
    res = release(version="2.0.0", model_dir=_export(tmp_path, "m", _lineage(3)), settings=settings)
    assert not res.rendered and not (res.out_dir / "manifests.yaml").exists()
    patch = yaml.safe_load((res.out_dir / "release-patch.yaml").read_text())
    assert patch["metadata"]["annotations"] == lineage_annotations(_lineage(3))
    assert patch["spec"]["predictor"]["canaryTrafficPercent"] == 10
    ops = yaml.safe_load((res.out_dir / "container-patch.yaml").read_text())
    assert ops[-1] == {
        "op": "replace",
        "path": "/spec/predictor/containers/0/env/0/value",
        "value": "s3://models/hardneg/2.0.0",
    }
    assert len(load_history(settings.releases_dir)) == 1


@needs_kubectl
def test_cli_release_and_lineage(tmp_path, monkeypatch):
    from hardneg.cli import app

    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump(
            {
                "release": {
                    "k8s_dir": str(REPO / "k8s"),
                    "releases_dir": str(tmp_path / "releases"),
                    "storage_uri": {"prod": "s3://b/{version}"},
                }
            }
        )
    )
    m1 = _export(tmp_path, "m1", _lineage(1))
    runner = CliRunner()
    res = runner.invoke(
        app, ["-c", str(params), "release", "--model-dir", str(m1), "--version", "1.0.0", "--canary", "10"]
    )
    assert res.exit_code == 0, res.output
    out = tmp_path / "releases" / "1.0.0"
    assert _isvc(out)["spec"]["predictor"]["canaryTrafficPercent"] == 10
    bad = runner.invoke(
        app, ["-c", str(params), "release", "--version", "1.0.0", "--canary", "0", "--model-dir", str(m1)]
    )
    assert bad.exit_code == 1 and "1..99" in bad.output

    monkeypatch.chdir(tmp_path)  # no data.dvc above tmp_path
    ok = runner.invoke(app, ["lineage", str(m1), "--release", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    chain = json.loads(ok.stdout)
    assert [s["name"] for s in chain["stages"]] == ["ONNX export", "InferenceService (1.0.0)"]
    other = _export(tmp_path, "m2", _lineage(2))
    res = runner.invoke(app, ["lineage", str(other), "--release", str(out)])
    assert res.exit_code == 1 and "MISMATCH" in res.output


# --------------------------------------------------------------------------------------------------- lineage chain


def _pipeline_run(tmp_path: Path, data: str = "c0c0f55923ff16f37dc14e52410c3b04.dir") -> Path:
    run = tmp_path / "run"
    base = Lineage(data, "a" * 40, "p" * 16)
    (run / "mine").mkdir(parents=True)
    (run / "mine" / "negatives.jsonl").write_text(
        '{"query_id": "q1", "positive_id": "d1", "negative_ids": ["d2"]}\n'
    )
    write_lineage(run / "mine", base)
    neg_sha = sha256_file(run / "mine" / "negatives.jsonl")
    (run / "train").mkdir()
    (run / "train" / "config.json").write_text("{}")
    write_lineage(run / "train", base.derive(negatives_sha256=neg_sha))
    exp = base.derive(negatives_sha256=neg_sha)
    exp.extra["metrics"] = {"ndcg@10": 0.7}
    _export(run, "export", exp)
    return run


def test_lineage_chain_complete_and_consistent(tmp_path):
    dvc = tmp_path / "data.dvc"
    dvc.write_text("outs:\n- md5: c0c0f55923ff16f37dc14e52410c3b04.dir\n  path: data\n")
    chain = lineage_chain(_pipeline_run(tmp_path), dvc_file=dvc)
    assert [s.name for s in chain.stages] == ["data.dvc", "mining output", "trained model", "ONNX export"]
    assert chain.ok and chain.problems == [] and all(s.status == "ok" for s in chain.stages)


def test_lineage_chain_reports_data_version_mismatch(tmp_path):
    dvc = tmp_path / "data.dvc"
    dvc.write_text("outs:\n- md5: ffffffffffffffffffffffffffffffff.dir\n  path: data\n")
    chain = lineage_chain(_pipeline_run(tmp_path), dvc_file=dvc)
    assert not chain.ok and len(chain.problems) == 3  # mining, training and export all differ from data.dvc
    assert "says ffffffffffffffffffffffffffffffff.dir" in chain.problems[0]
    assert [s.status for s in chain.stages] == ["ok"] + ["DATA VERSION MISMATCH"] * 3


def test_lineage_chain_reports_swapped_negatives(tmp_path):
    run = _pipeline_run(tmp_path)
    (run / "mine" / "negatives.jsonl").write_text(
        '{"query_id": "q1", "positive_id": "d1", "negative_ids": ["d9"]}\n'
    )
    chain = lineage_chain(run, dvc_file=tmp_path / "absent.dvc")
    assert not chain.ok
    assert {s.name for s in chain.stages if s.status == "MISMATCH (negatives)"} == {
        "trained model",
        "ONNX export",
    }


def test_lineage_chain_warns_on_commit_drift_and_needs_some_lineage(tmp_path):
    run = _pipeline_run(tmp_path)
    write_lineage(run / "train", Lineage("c0c0f55923ff16f37dc14e52410c3b04.dir", "b" * 40, "p" * 16))
    chain = lineage_chain(run, dvc_file=tmp_path / "absent.dvc")
    assert chain.ok and any(w.startswith("git_commit differs") for w in chain.warnings)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(HardnegError, match="no lineage found"):
        lineage_chain(tmp_path / "nothing", dvc_file=tmp_path / "absent.dvc")
