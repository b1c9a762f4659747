"""Compile, run locally (KFP's SubprocessRunner, the default main job) and submit to a cluster (kfp.Client)."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hardneg.config import params_hash
from hardneg.errors import HardnegError
from hardneg.lineage import data_version, git_commit
from hardneg.settings import settings
from hardneg.stages import embed_items

log = logging.getLogger(__name__)

DATA_PATH_DEFAULT = "data/scifact"


def model_version(lineage: dict[str, str]) -> str:
    """A content-addressed model version (data md5, params hash, commit): same inputs -> same version -> cache hit."""
    commit = lineage["git_commit"].replace("-dirty", "")[:7] or "nogit"
    return f"m-{lineage['data_version'][:8]}-{lineage['params_hash'][:8]}-{commit}"


def _localise(params: dict[str, Any], repo: Path) -> dict[str, Any]:
    """Absolute paths for a local run (components may run with another working directory)."""
    p = copy.deepcopy(params)

    def absolute(v: str) -> str:
        return str(v if os.path.isabs(v) else (repo / v).resolve())

    p["embed"]["cache_dir"] = absolute(p["embed"]["cache_dir"])
    p["pipeline"]["pipeline_root"] = absolute(p["pipeline"]["pipeline_root"])
    if "release" in p:
        for key in ("k8s_dir", "releases_dir"):
            if key in p["release"]:
                p["release"][key] = absolute(p["release"][key])
    return p


def pipeline_arguments(
    params: dict[str, Any], repo: str | os.PathLike = ".", *, cluster: bool = False
) -> dict[str, Any]:
    """The pipeline's run arguments, all derived from params.yaml and the repo's data.dvc / git state."""
    repo = Path(repo).resolve()
    p = copy.deepcopy(params) if cluster else _localise(params, repo)
    if cluster:
        p["embed"]["cache_dir"] = f"{settings(params).pipeline.cluster.cache_mount}/embeddings"
    dvc_file = repo / "data.dvc"
    if not dvc_file.exists():
        raise HardnegError(
            f"{dvc_file} not found: run from the project root (the pipeline pulls its data with DVC)"
        )
    lineage = {
        "data_version": data_version(dvc_file),
        "git_commit": git_commit(repo),
        "params_hash": params_hash(params),
    }
    data_dir = p["data"]["dir"]
    return {
        "dvc_repo": settings(params).pipeline.cluster.git_repo if cluster else str(repo),
        "dvc_rev": lineage["git_commit"].replace("-dirty", "") if cluster else "",
        "data_path": data_dir,
        "data_version": lineage["data_version"],
        "params_json": json.dumps(p, sort_keys=True),
        "lineage_json": json.dumps(lineage, sort_keys=True),
        "embed_items": embed_items(settings(p)),
        "model_version": model_version(lineage),
    }


def compile_pipeline(params: dict[str, Any], out: str | os.PathLike, repo: str | os.PathLike = ".") -> Path:
    """Write the KFP IR YAML (2 documents: the pipeline spec, then the kfp-kubernetes platform spec) with the
    cluster defaults of every parameter baked in from params.yaml."""
    from kfp import compiler

    from pipelines.hardneg_pipeline import build_pipeline

    args = pipeline_arguments(params, repo, cluster=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(params), str(out), pipeline_parameters=args)
    return out


@contextlib.contextmanager
def _root_logging_to(stream: Any):
    """Route the root logger (KFP's cache-hit and skip lines, our own parent-process logs) to ``stream`` for the
    run, in KFP's own line format (so :class:`~pipelines.runlog.RunLogFilter` reads them like the rest)."""
    from kfp.local.logging_utils import MillisecondFormatter

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        MillisecondFormatter(fmt="%(asctime)s - %(levelname)s - %(message)s", datefmt="%H:%M:%S.%f")
    )
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


@contextlib.contextmanager
def _builtin_print_restored():
    """Put ``builtins.print`` back after a run. KFP's ``logging_utils.indented_print`` swaps it without a lock; two
    ParallelFor tasks on two threads can restore each other's indenting wrapper, which then indents every later
    ``print`` of the process (a notebook, the next run's log lines)."""
    import builtins

    saved = builtins.print
    try:
        yield
    finally:
        builtins.print = saved


def run_local(
    params: dict[str, Any], repo: str | os.PathLike = ".", *, caching: bool = True, verbose: bool = False
) -> dict[str, Any]:
    """Run the whole pipeline with KFP's local SubprocessRunner (no cluster, no Docker) and return a summary.
    Unless ``verbose``, the terminal gets one start and one finish line per task (:class:`RunLogFilter`) and
    everything KFP and the tasks print (stdout, stderr, warnings, the root logger) goes whole to
    ``<pipeline_root>/logs/run-<timestamp>.log`` (its path is in the summary as ``log``)."""
    import sys
    from datetime import datetime

    from pipelines.runlog import RunLogFilter

    args = pipeline_arguments(params, repo)
    lp = json.loads(args["params_json"])
    root = Path(lp["pipeline"]["pipeline_root"])
    (root / "logs").mkdir(parents=True, exist_ok=True)
    log_file = root / "logs" / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S-%f')}.log"
    with contextlib.ExitStack() as stack:
        stack.enter_context(_builtin_print_restored())
        if not verbose:
            fh = stack.enter_context(log_file.open("w", encoding="utf-8"))
            filt = RunLogFilter(sys.stdout, fh, log_path=str(log_file))
            stack.enter_context(contextlib.redirect_stdout(filt))
            stack.enter_context(contextlib.redirect_stderr(filt))
            stack.enter_context(_root_logging_to(filt))
            stack.callback(filt.flush)
        summary = _run_local(lp, args, root, caching)
    summary["log"] = None if verbose else str(log_file)
    return summary


def _run_local(lp: dict[str, Any], args: dict[str, Any], root: Path, caching: bool) -> dict[str, Any]:
    from kfp import local

    from pipelines.hardneg_pipeline import build_pipeline

    os.environ.setdefault("HARDNEG_IMAGE", lp["pipeline"]["image"])
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        enable_caching=caching,
        raise_on_error=True,
    )
    before = set(root.glob("hardneg-*"))
    t0 = time.perf_counter()
    try:
        build_pipeline(lp)(**args)
    except RuntimeError as e:
        raise HardnegError(_strip_ansi(str(e))) from None
    seconds = time.perf_counter() - t0
    new_runs = sorted(set(root.glob("hardneg-*")) - before)
    return summarize_run(root, new_runs[-1] if new_runs else None, seconds, args)


def _strip_ansi(s: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", s)


def _newest(root: Path, rel: str) -> Path | None:
    hits = sorted(root.glob(f"hardneg-*/{rel}"), key=lambda p: p.stat().st_mtime)
    return hits[-1] if hits else None


def summarize_run(root: Path, run_dir: Path | None, seconds: float, args: dict[str, Any]) -> dict[str, Any]:
    """Where the outputs are and the headline metrics. A fully cached run creates no run folder: its outputs are
    those of the newest earlier run (the cache entries point there)."""
    cached = run_dir is None or not (run_dir / "evaluate").exists()
    metrics_file = _newest(root, "evaluate/metrics")
    served_file = _newest(root, "export-onnx/served_metrics")
    summary: dict[str, Any] = {
        "seconds": round(seconds, 1),
        "run_dir": str(run_dir) if run_dir else None,
        "served_from_cache": cached,
        "model_version": args["model_version"],
        "lineage": json.loads(args["lineage_json"]),
        "metrics": json.loads(metrics_file.read_text()) if metrics_file else None,
        "served_metrics": json.loads(served_file.read_text()) if served_file else None,
    }
    for name, rel in (
        ("onnx_model", "export-onnx/onnx_model"),
        ("release", "register/manifests"),
        ("evaluation", "evaluate/evaluation"),
        ("model", "train/model"),
        ("negatives", "mine/negatives"),
    ):
        hit = _newest(root, rel)
        summary[name] = str(hit) if hit else None
    return summary


def submit(
    params: dict[str, Any],
    host: str,
    *,
    package: str | os.PathLike | None = None,
    experiment: str = "hardneg",
    recurring_cron: str | None = None,
    repo: str | os.PathLike = ".",
    client=None,
) -> dict[str, Any]:
    """Create a run (or a recurring run with ``recurring_cron``, 6-field cron) on a KFP backend."""
    import tempfile

    if client is None:
        import kfp

        client = kfp.Client(host=host)
    args = pipeline_arguments(params, repo, cluster=True)
    with tempfile.TemporaryDirectory() as td:
        pkg = Path(package) if package else compile_pipeline(params, Path(td) / "hardneg-pipeline.yaml", repo)
        exp = client.create_experiment(name=experiment)
        exp_id = getattr(exp, "experiment_id", None) or getattr(exp, "id", None)
        if recurring_cron:
            r = client.create_recurring_run(
                experiment_id=exp_id,
                job_name=f"hardneg-{args['model_version']}",
                cron_expression=recurring_cron,
                pipeline_package_path=str(pkg),
                params=args,
                max_concurrency=1,
                no_catchup=True,
            )
            return {"recurring_run_id": getattr(r, "recurring_run_id", None), "experiment_id": exp_id}
        r = client.create_run_from_pipeline_package(
            str(pkg), arguments=args, run_name=f"hardneg-{args['model_version']}", experiment_name=experiment
        )
        return {"run_id": getattr(r, "run_id", None), "experiment": experiment}
