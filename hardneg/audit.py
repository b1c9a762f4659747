"""The lineage audit (``hardneg lineage``): data.dvc md5 -> mining output -> trained model -> ONNX metadata ->
InferenceService annotations, collected from a run folder and a release, then checked for disagreements (data
version, the served lineage vs the export's, the negatives a model was trained on)."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardneg.artifacts import METADATA_FILE, NEGATIVES_FILE
from hardneg.errors import HardnegError
from hardneg.k8s_validate import ISVC_KIND
from hardneg.lineage import LINEAGE_FILE, Lineage, data_version, find_repo_root, read_lineage, sha256_file
from hardneg.release import (
    ANN_DATA_VERSION,
    ANN_GIT_COMMIT,
    ANN_METRICS,
    ANN_PARAMS_HASH,
    LABEL_MODEL_VERSION,
    LINEAGE_ANNOTATIONS,
    MANIFESTS_FILE,
    _with_metrics,
    compact_json,
)


@dataclass
class Stage:
    name: str
    source: str
    data_version: str | None = None
    git_commit: str | None = None
    params_hash: str | None = None
    metrics: str | None = None  # compact JSON
    inputs: dict[str, str] = field(default_factory=dict)
    status: str = "ok"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LineageChain:
    stages: list[Stage]
    problems: list[str]  # disagreements: the chain is broken (exit 1)
    warnings: list[str]  # differences worth a look (e.g. stages built at different commits)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "stages": [s.to_dict() for s in self.stages],
            "problems": self.problems,
            "warnings": self.warnings,
        }


def _stage_from_lineage(name: str, source: Path, lin: Lineage) -> Stage:
    return Stage(
        name,
        str(source),
        lin.data_version,
        lin.git_commit,
        lin.params_hash,
        compact_json(lin.extra.get("metrics")) if lin.extra.get("metrics") is not None else None,
        dict(lin.inputs),
    )


def _classify(folder: Path) -> str:
    if (folder / NEGATIVES_FILE).exists():
        return "mining output"
    if (folder / "model.onnx").exists():
        return "ONNX export"
    if any((folder / n).exists() for n in ("train_metrics.json", "model.safetensors", "config.json")):
        return "trained model"
    return f"artifact ({folder.name})"


_ORDER = {"data.dvc": 0, "mining output": 1, "trained model": 2, "ONNX export": 4, "InferenceService": 5}


def _isvc_stages(path: Path) -> list[Stage]:
    out = []
    files = (
        [path] if path.is_file() else [p for p in sorted(path.rglob("*.yaml")) if p.name == MANIFESTS_FILE]
    )
    for f in files:
        try:
            docs = list(yaml.safe_load_all(f.read_text(encoding="utf-8")))
        except yaml.YAMLError:
            continue
        for d in docs:
            if isinstance(d, dict) and d.get("kind") == ISVC_KIND:
                meta = d.get("metadata") or {}
                anns = meta.get("annotations") or {}
                if not any(k in anns for k in LINEAGE_ANNOTATIONS):
                    continue
                ver = (meta.get("labels") or {}).get(LABEL_MODEL_VERSION, "?")
                out.append(
                    Stage(
                        f"InferenceService ({ver})",
                        str(f),
                        anns.get(ANN_DATA_VERSION),
                        anns.get(ANN_GIT_COMMIT),
                        anns.get(ANN_PARAMS_HASH),
                        anns.get(ANN_METRICS),
                    )
                )
    return out


def lineage_chain(
    model_dir: str | os.PathLike,
    release_path: str | os.PathLike | None = None,
    dvc_file: str | os.PathLike | None = None,
) -> LineageChain:
    """data.dvc md5 -> mining output -> trained model -> ONNX metadata -> InferenceService annotations, as far as
    ``model_dir`` (searched 3 levels deep) and ``release_path`` (a release folder or manifest) hold them."""
    root = Path(model_dir)
    if not root.is_dir():
        raise HardnegError(f"not a folder: {root}")
    stages: list[Stage] = []
    dvc = Path(dvc_file) if dvc_file else None
    if dvc is None:
        repo = find_repo_root(root) or find_repo_root()
        dvc = repo / "data.dvc" if repo else None
    if dvc is not None and dvc.exists():
        stages.append(Stage("data.dvc", str(dvc), data_version(dvc)))

    stages += _artifact_stages(root)
    stages += _isvc_stages(root)
    if release_path is not None:
        rp = Path(release_path)
        if not rp.exists():
            raise HardnegError(f"no such release folder or manifest: {rp}")
        stages += _isvc_stages(rp)
    if len(stages) <= (1 if stages and stages[0].name == "data.dvc" else 0):
        raise HardnegError(
            f"{root}: no lineage found (no {LINEAGE_FILE}, {METADATA_FILE} or rendered release)"
        )
    stages.sort(key=lambda s: _ORDER.get(s.name.split(" (")[0], 3))

    problems: list[str] = []
    _check_data_versions(stages, problems)
    _check_served_lineage(stages, problems)
    _check_negatives(stages, problems)
    warnings = [
        f"{attr} differs between stages: "
        + ", ".join(f"{s.name}={getattr(s, attr)}" for s in stages if getattr(s, attr))
        for attr in ("git_commit", "params_hash")
        if len({getattr(s, attr) for s in stages if getattr(s, attr)}) > 1
    ]
    return LineageChain(stages, problems, warnings)


def _artifact_stages(root: Path) -> list[Stage]:
    """The exports (``metadata.json`` lineage) and other artifacts (``lineage.json``) up to 3 levels below ``root``."""
    stages: list[Stage] = []
    seen: set[Path] = set()
    candidates = [p for p in sorted(root.rglob("*")) if p.is_file() and len(p.relative_to(root).parts) <= 4]
    for f in candidates:
        folder = f.parent
        if f.name == METADATA_FILE and folder not in seen:
            try:
                meta = json.loads(f.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
            if isinstance(meta, dict) and isinstance(meta.get("lineage"), dict):
                seen.add(folder)
                lin = _with_metrics(Lineage.from_dict(meta["lineage"]), meta)
                stages.append(_stage_from_lineage("ONNX export", f, lin))
    for f in candidates:
        folder = f.parent
        if f.name == LINEAGE_FILE and folder not in seen:
            seen.add(folder)
            stages.append(_stage_from_lineage(_classify(folder), f, read_lineage(folder)))
    return stages


def _check_data_versions(stages: list[Stage], problems: list[str]) -> None:
    """Every stage was built from one data version (the reference: data.dvc when present, else the earliest)."""
    versions = {s.data_version for s in stages if s.data_version}
    if len(versions) <= 1:
        return
    ref = next(s for s in stages if s.data_version)
    for s in stages:
        if s.data_version and s.data_version != ref.data_version:
            s.status = "DATA VERSION MISMATCH"
            problems.append(
                f"{s.name} ({s.source}) was built from data {s.data_version}, "
                f"{ref.name} ({ref.source}) says {ref.data_version}"
            )


def _check_served_lineage(stages: list[Stage], problems: list[str]) -> None:
    """The served model (InferenceService annotations) carries exactly the exported model's lineage."""
    exports = [s for s in stages if s.name == "ONNX export"]
    for isvc in (s for s in stages if s.name.startswith("InferenceService")):
        for ex in exports:
            diff = [
                f"{f}: {getattr(isvc, f)!r} vs {getattr(ex, f)!r}"
                for f in ("data_version", "git_commit", "params_hash", "metrics")
                if getattr(isvc, f) != (getattr(ex, f) if f != "metrics" else (ex.metrics or "{}"))
            ]
            if diff:
                isvc.status = "MISMATCH vs ONNX export"
                problems.append(
                    f"{isvc.name} ({isvc.source}) does not carry the lineage of {ex.source}: "
                    + "; ".join(diff)
                )


def _check_negatives(stages: list[Stage], problems: list[str]) -> None:
    """The negatives a model was trained on (sha256 in its lineage) are the mining output present."""
    miners = [s for s in stages if s.name == "mining output"]
    for s in stages:
        want = s.inputs.get("negatives_sha256")
        for m in miners if want else []:
            have = sha256_file(Path(m.source).parent / NEGATIVES_FILE)
            if have != want:
                s.status = "MISMATCH (negatives)"
                problems.append(
                    f"{s.name} ({s.source}) was trained on negatives {want[:12]}..., {m.source} has {have[:12]}..."
                )
