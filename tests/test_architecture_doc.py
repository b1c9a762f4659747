"""docs/architecture.md's stage table stays true: every stage has its function, component, CLI command and dvc
stage, and the component reads exactly the artifacts the table says (the files each writes are checked against a
real run in test_stage_isolation)."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml
from _architecture import stages

import hardneg.stages as st

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
PIPELINE_ORDER = ["validate", "embed", "reduce", "retrieve", "mine", "train", "evaluate", "export"]


def _artifacts(fn, kind: str) -> list[str]:
    """The parameter names annotated ``Input[...]`` / ``Output[...]`` of a KFP component's function."""
    mark = {"Input[": "InputAnnotation", "Output[": "OutputAnnotation"}[kind]
    return [n for n, p in inspect.signature(fn).parameters.items() if mark in str(p.annotation)]


def test_the_table_lists_the_stages_in_pipeline_order():
    assert [s.name for s in stages()] == PIPELINE_ORDER
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == PIPELINE_ORDER


@pytest.mark.parametrize("stage", stages(), ids=lambda s: s.name)
def test_each_stage_reads_and_writes_what_the_table_says(stage):
    assert callable(getattr(st, f"{stage.name}_stage"))
    module = importlib.import_module(f"components.{stage.name}")
    fn = getattr(module, stage.component).python_func
    assert _artifacts(fn, "Input[") == stage.reads
    outputs = [o for o in _artifacts(fn, "Output[") if o not in ("metrics", "served_metrics")]  # KFP Metrics
    assert set(outputs) <= set(stage.writes), (stage.name, outputs, sorted(stage.writes))
    from typer.main import get_command

    from hardneg.cli import app

    assert stage.name in get_command(app).commands  # `hardneg <stage>`


def test_the_parser_reads_the_table_for_real():
    by = {s.name: s for s in stages()}
    assert by["export"].reads == ["data", "retrieved", "model", "evaluation"]
    assert by["evaluate"].writes["evaluation"].required >= {"fusion.json", "metrics.json"}
    assert "seen_documents.txt" in by["export"].writes["onnx_model"].optional
    assert by["train"].writes["model"].open and not by["retrieve"].writes["retrieved"].open


def test_cli_lists_the_stage_commands_in_pipeline_order():
    """`hardneg --help` (and cli.py) read in the order the pipeline runs."""
    from hardneg.cli import app

    names = [c.name for c in app.registered_commands]
    stage_cmds = [n for n in names if n in PIPELINE_ORDER]
    assert stage_cmds == PIPELINE_ORDER
    assert names[: len(PIPELINE_ORDER)] == PIPELINE_ORDER  # the stages come first
