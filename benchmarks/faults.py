"""Fault matrix: the real CLI in subprocesses on the tiny fixture, killed (SIGKILL early / late), starved of disk
(RLIMIT_FSIZE with SIGXFSZ ignored, so writes fail with EFBIG) and run twice at once on one output folder.

For every stage x fault it records one row of ``benchmarks/results/faults.json``::

    {"rows": [{"stage": ..., "fault": ..., "outcome": "finished" | "refused" | "corrupt", "detail": ...}, ...]}

- ``finished``: after the fault a plain rerun (for the twins: both runs) exits 0 and its deterministic outputs hash
  the same as an uninterrupted run's (``KEY_FILES``; JSON files compared without their timing fields);
- ``refused``: the stage failed with a one-line message (disk full: naming the file and the command to rerun) and the
  previous output is intact (same hashes, checksums verify);
- ``corrupt``: anything else (a damaged previous output, a rerun whose outputs differ, a traceback).

Usage: ``python benchmarks/faults.py [--stages embed,mine] [--faults sigkill-early,...] [--out PATH]``.
The fast cases of tests/test_faults.py use the same functions.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hardneg.model_card import CARD_FILE

REPO = Path(__file__).resolve().parents[1]
FAULTS = ("sigkill-early", "sigkill-late", "disk-full", "concurrent-twin")
FSIZE_LIMIT = 64  # bytes: any bigger file write fails with EFBIG (a full disk, as the stage sees it)
_VOLATILE = {
    "seconds",
    "timing",
    "load_seconds",
    "train_seconds",
    "eval_seconds",
    "s_per_step",
    "pairs_per_s",
}
_VOLATILE |= {"created_at", "dev_curve", "log", "wall_s"}


@dataclass
class Stage:
    name: str
    args: Callable[[Path], list[str]]  # CLI arguments (after `python -m hardneg -c params.yaml`)
    out: str  # output folder, relative to the project
    key: tuple[str, ...]  # glob patterns (relative to out) of the deterministic outputs
    needs: tuple[str, ...] = ()  # project folders the stage reads (taken from the reference run)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "embed",
            lambda p: ["embed", "--data-dir", "data", "--out", "emb", "--no-progress"],
            "emb",
            ("*/corpus.npy", "*/queries.npy", "*/ids.json"),
        ),
        Stage(
            "reduce",
            lambda p: ["reduce", "--emb-dir", "emb", "--out", "red"],
            "red",
            ("corpus.npy", "queries.npy", "doc_ids.json", "query_ids.json"),
            ("emb",),
        ),
        Stage(
            "retrieve",
            lambda p: ["retrieve", "--data-dir", "data", "--reduced-dir", "red", "--out", "ret"],
            "ret",
            ("splits.json", "first_stage.json", "runs.json"),
            ("red",),
        ),
        Stage(
            "mine",
            lambda p: [
                "mine",
                "--reduced-dir",
                "red",
                "--retrieved-dir",
                "ret",
                "--out",
                "mined",
                "--data-dir",
                "data",
                "--no-progress",
            ],
            "mined",
            ("negatives.jsonl",),
            ("red", "ret"),
        ),
        Stage(
            "train",
            lambda p: [
                "train",
                "--data-dir",
                "data",
                "--negatives",
                "mined",
                "--retrieved-dir",
                "ret",
                "--out",
                "model",
            ],
            "model",
            ("*.safetensors", CARD_FILE),
            ("ret", "mined", "cache"),
        ),
        Stage(
            "export",
            lambda p: [
                "export",
                "--model-dir",
                "model",
                "--retrieved-dir",
                "ret",
                "--no-fusion",
                "--out",
                "export",
                "--data-dir",
                "data",
            ],
            "export",
            ("*.onnx",),
            ("model", "ret"),
        ),
        Stage(
            "compare",
            lambda p: [
                "compare",
                "--data-dir",
                "data",
                "--emb-dir",
                "emb",
                "--out",
                "quality",
                "--seeds",
                "1",
                "--arms",
                "random,paper",
            ],
            "quality",
            ("runs/*/*.json",),
            ("emb", "cache"),
        ),
        Stage(
            "pipeline",
            lambda p: ["pipeline", "run", "--summary-json", "summary.json"],
            "local_outputs",
            (),
            ("cache",),
        ),
    )
}
FAST = ("embed", "reduce", "retrieve", "mine", "train", "export")  # the stages tests/test_faults.py runs
# ------------------------------------------------------------------------------------------------ the project


def make_project(root: Path, model_dir: Path, *, git: bool = False) -> Path:
    """A project folder: the tiny fixture as data/, a tiny BERT as tinymodel/, params.yaml for tiny models."""
    import yaml

    sys.path.insert(0, str(REPO))
    from hardneg.config import load_params

    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "tests" / "fixtures" / "tiny", root / "data")
    shutil.copytree(model_dir, root / "tinymodel")
    p = load_params(REPO / "params.yaml")
    m = {"name": str(root / "tinymodel"), "max_length": 64, "batch_size": 16, "weight": 1.0}
    p["data"]["dir"] = "data"
    p["embed"].update(
        cache_dir=str(root / "cache"),
        chunk_size=16,
        shards=1,
        models=[{**m, "query_prompt": "", "document_prompt": ""}],
    )
    p["mine"].update(policy="positive-aware", top_k=50, num_negatives=3)
    p["retrieve"].update(top_k=50, rerank_depth=10)
    p["train"].update(base_model=str(root / "tinymodel"), max_steps=8, eval_every=4, time_cap_min=5)
    p["train"]["bi_encoder"].update(max_length=64, queries_per_step=4)
    p["compare"].update(max_steps=4, ensemble_weight_grid=[1.0])
    p["export"].update(parity_int8_max_mrr_drop=1.0, parity_sample_pairs=32)
    p["pipeline"].update(pipeline_root=str(root / "local_outputs"), min_gain_mrr10=-1.0)
    p["release"].update(k8s_dir=str(REPO / "k8s"), releases_dir=str(root / "releases"))
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False), encoding="utf-8")
    if git:
        _init_git_dvc(root)
    return root


def _init_git_dvc(root: Path) -> None:
    dvc = str(Path(sys.executable).parent / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    for cmd in (
        ["git", "init", "-q"],
        ["git", "config", "user.email", "t@example.com"],
        ["git", "config", "user.name", "t"],
        [dvc, "init", "-q"],
        [dvc, "add", "-q", "data"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "data"],
    ):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=env)


# --------------------------------------------------------------------------------------------------- running


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    env.update(DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false")
    return env


def _limit_fsize() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))


def start(stage: Stage, root: Path, *, disk_full: bool = False, tag: str = "") -> subprocess.Popen:
    """The stage's CLI in its own process group; output to ``.<stage><tag>.log`` (a pipe under the file size
    limit, which would cut the log file itself)."""
    cmd = [sys.executable, "-m", "hardneg", "-c", "params.yaml", *stage.args(root)]
    out = subprocess.PIPE if disk_full else open(root / f".{stage.name}{tag}.log", "wb")  # noqa: SIM115
    try:
        return subprocess.Popen(
            cmd,
            cwd=root,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_limit_fsize if disk_full else None,
        )
    finally:
        if out is not subprocess.PIPE:
            out.close()


def run(stage: Stage, root: Path, **kw) -> tuple[int, str, float]:
    t = time.perf_counter()
    p = start(stage, root, **kw)
    piped, _ = p.communicate(timeout=900)
    if piped is not None:
        (root / f".{stage.name}{kw.get('tag', '')}.log").write_bytes(piped)
    return p.returncode, _log(stage, root, kw.get("tag", "")), time.perf_counter() - t


def _log(stage: Stage, root: Path, tag: str = "") -> str:
    f = root / f".{stage.name}{tag}.log"
    return f.read_text(encoding="utf-8", errors="replace") if f.exists() else ""


def _staging_has_file(stage: Stage, root: Path) -> bool:
    if stage.name == "compare":
        return any((root / "quality").glob("runs/*/*.json"))
    if stage.name == "pipeline":
        return any((root / "local_outputs").glob("hardneg-*/**/model.safetensors"))
    return any(p.is_file() for d in root.glob(f".{stage.out}.partial-*") for p in d.rglob("*"))


def run_killed(stage: Stage, root: Path, when: str, ref_seconds: float) -> str:
    """Start the stage and SIGKILL its process group: ``early`` after a third of the reference time, ``late`` as soon
    as its staging folder holds a file (fallback: 90% of the reference time). Returns when it was killed."""
    p = start(stage, root, tag="-killed")
    t0 = time.perf_counter()
    deadline = t0 + (ref_seconds * (0.4 if when == "early" else 0.85))
    while p.poll() is None:
        if time.perf_counter() >= deadline or (when == "late" and _staging_has_file(stage, root)):
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            return f"killed after {time.perf_counter() - t0:.1f}s"
        time.sleep(0.02)
    return f"finished before the kill ({time.perf_counter() - t0:.1f}s, rc {p.returncode})"


# ------------------------------------------------------------------------------------------------- outcomes


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in _VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def key_hashes(stage: Stage, root: Path) -> dict[str, str]:
    """sha256 of the stage's deterministic outputs (JSON without timing fields)."""
    out = root / stage.out
    if stage.name == "pipeline":
        summ = root / "summary.json"
        if not summ.exists():
            return {}
        # the served model's ONNX stamps the run's model version: compare what the run measured instead
        s = json.loads(summ.read_text(encoding="utf-8"))
        data = json.dumps(_strip({k: s.get(k) for k in ("metrics", "served_metrics")}), sort_keys=True)
        return {"summary.json metrics": hashlib.sha256(data.encode()).hexdigest()}
    else:
        pats = stage.key
    hashes = {}
    for f in sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else []:
        rel = f.relative_to(out).as_posix()
        if not any(fnmatch.fnmatch(rel, pat) for pat in pats):
            continue
        data = f.read_bytes()
        if f.suffix == ".json":
            data = json.dumps(_strip(json.loads(data)), sort_keys=True).encode()
        hashes[rel] = hashlib.sha256(data).hexdigest()
    return hashes


def verified(stage: Stage, root: Path) -> str | None:
    """None when the output folder is absent or passes its checksums; else the refusal message."""
    sys.path.insert(0, str(REPO))
    from hardneg.artifacts import CHECKSUMS_FILE, verify_checksums
    from hardneg.errors import HardnegError

    out = root / stage.out
    if stage.name in ("compare", "pipeline") or not out.is_dir():
        return None
    if not (out / CHECKSUMS_FILE).exists():  # every stage writes it last: without it the folder is incomplete
        return f"{out} has no {CHECKSUMS_FILE}"
    try:
        verify_checksums(out, f"hardneg {stage.name}")
    except HardnegError as e:
        return str(e)
    return None


def _error_line(log: str) -> str:
    at = log.rfind("error:")
    if at >= 0:  # the CLI's message (rich wraps it over several lines)
        return " ".join(log[at:].split())[:400]
    return (log.strip().splitlines() or ["(no output)"])[-1][:300]


def rerun_outcome(stage: Stage, root: Path, ref: dict[str, str], what: str) -> tuple[str, str]:
    """After a fault: rerun the stage; finished = exit 0 and the reference hashes."""
    bad = verified(stage, root)
    rc, log, secs = run(stage, root)
    if rc != 0:
        if "Traceback" not in log and "error:" in log:
            return "refused", f"{what}; rerun refused: {_error_line(log)}"
        return "corrupt", f"{what}; rerun failed (rc {rc}): {_error_line(log)}"
    if key_hashes(stage, root) != ref:
        return "corrupt", f"{what}; rerun finished but its outputs differ from an uninterrupted run"
    state = (
        f"output after the kill refused by its checksums ({bad})"
        if bad
        else "output after the kill absent or intact"
    )
    return "finished", f"{what}; {state}; rerun finished in {secs:.1f}s, outputs identical ({len(ref)} files)"


def disk_full_outcome(stage: Stage, root: Path, ref: dict[str, str]) -> tuple[str, str]:
    """With the previous output in place: run under RLIMIT_FSIZE; it must fail cleanly and leave that output."""
    rc, log, _ = run(stage, root, disk_full=True, tag="-full")
    intact = key_hashes(stage, root) == ref and verified(stage, root) is None
    leftovers = [p.name for p in root.glob(f".{stage.out}.partial-*")]
    if not intact:
        return "corrupt", f"rc {rc}; the previous output was damaged: {_error_line(log)}"
    if rc == 0:
        return "finished", "finished within the file size limit; previous output intact"
    clean = "Traceback" not in log and "no space left" in log
    detail = (
        f"rc {rc}, previous output intact, staging left: {leftovers or 'none'}; message: {_error_line(log)}"
    )
    return ("refused" if clean else "corrupt"), detail + ("" if clean else " (not a clean disk-full message)")


def twin_outcome(stage: Stage, root: Path, ref: dict[str, str]) -> tuple[str, str]:
    procs = [start(stage, root, tag=f"-twin{i}") for i in (1, 2)]
    rcs = [p.wait(900) for p in procs]
    logs = [_log(stage, root, f"-twin{i}") for i in (1, 2)]
    if any(rcs):
        bad = next(lg for rc, lg in zip(rcs, logs, strict=True) if rc)
        return "corrupt", f"exit codes {rcs}: {_error_line(bad)}"
    if key_hashes(stage, root) != ref or verified(stage, root):
        return "corrupt", "both finished but the output differs from an uninterrupted run"
    return "finished", f"both instances exited 0; output verified and identical ({len(ref)} files)"


# --------------------------------------------------------------------------------------------------- the matrix


def reference(root: Path, stages: list[str], repeats: int = 2) -> dict[str, tuple[dict[str, str], float]]:
    """``repeats`` uninterrupted runs of each of ``stages`` in order in ``root`` (each must reproduce the first's
    outputs: the stages are deterministic): {stage: (hashes, fastest seconds)}."""
    ref = {}
    for name in stages:
        seen = []
        for _ in range(repeats):
            shutil.rmtree(root / STAGES[name].out, ignore_errors=True)
            rc, log, secs = run(STAGES[name], root)
            if rc != 0:
                raise RuntimeError(f"reference run of {name} failed (rc {rc}):\n{log[-3000:]}")
            seen.append((key_hashes(STAGES[name], root), secs))
        if any(h != seen[0][0] for h, _ in seen):
            raise RuntimeError(f"two uninterrupted runs of {name} differ: not deterministic")
        ref[name] = (seen[0][0], min(s for _, s in seen))
    return ref


def case_project(ref_root: Path, dest: Path, stage: Stage, fault: str) -> Path:
    """A copy of the reference project; the stage's output removed (but for disk-full: the previous output stays);
    for embed also its chunk cache (so the stage really computes)."""
    shutil.copytree(ref_root, dest, symlinks=True, ignore=shutil.ignore_patterns(".*.log"))
    if fault != "disk-full":
        shutil.rmtree(dest / stage.out, ignore_errors=True)
        for extra in (["cache"] if stage.name == "embed" else []) + ["summary.json"]:
            p = dest / extra
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return dest


def run_case(ref_root: Path, work: Path, name: str, fault: str, ref: tuple[dict[str, str], float]) -> dict:
    stage = STAGES[name]
    root = case_project(ref_root, work / f"{name}-{fault}", stage, fault)
    hashes, secs = ref
    if fault.startswith("sigkill"):
        what = run_killed(stage, root, fault.split("-")[1], secs)
        outcome, detail = rerun_outcome(stage, root, hashes, what)
    elif fault == "disk-full":
        outcome, detail = disk_full_outcome(stage, root, hashes)
    else:
        outcome, detail = twin_outcome(stage, root, hashes)
    shutil.rmtree(root, ignore_errors=True)
    return {"stage": name, "fault": fault, "outcome": outcome, "detail": detail}


def build_reference(work: Path, stages: list[str]) -> tuple[Path, dict]:
    sys.path.insert(0, str(REPO))
    from tests.conftest import _build_tiny_bert

    model = _build_tiny_bert(work / "tiny-bert", REPO / "tests" / "fixtures" / "tiny")
    root = make_project(work / "reference", model, git="pipeline" in stages)
    order = [s for s in STAGES if s in stages or s in _upstream(stages)]
    return root, reference(root, order)


def _upstream(stages: list[str]) -> set[str]:
    chain = ["embed", "reduce", "retrieve", "mine", "train", "export"]
    need: set[str] = set()
    for s in stages:
        if s in chain:
            need |= set(chain[: chain.index(s)])
        elif s == "compare":
            need.add("embed")
    return need


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "faults.json")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp folder (removed)")
    a = ap.parse_args(argv)
    import tempfile

    stages, faults = a.stages.split(","), a.faults.split(",")
    with tempfile.TemporaryDirectory(prefix="hardneg-faults-", dir=a.workdir) as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        ref_root, ref = build_reference(work, stages)
        rows = []
        for name in stages:
            for fault in faults:
                row = run_case(ref_root, work, name, fault, ref[name])
                print(f"{name:9s} {fault:16s} {row['outcome']:9s} {row['detail']}", flush=True)
                rows.append(row)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"rows": rows}, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {a.out} in {time.perf_counter() - t0:.0f}s")
    return 0 if all(r["outcome"] != "corrupt" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
