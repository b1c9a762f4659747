"""Lineage stamped into every artifact: data version (md5 in data.dvc), git commit, params hash, input hashes.

Reading ``data.dvc`` needs no dvc import (it is YAML). The chain data.dvc -> negatives -> model -> ONNX metadata ->
served model metadata -> InferenceService annotations uses the keys of :class:`Lineage` throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardneg.artifacts import sha256_file  # noqa: F401  (re-exported: lineage callers hash files)
from hardneg.errors import HardnegError

LINEAGE_FILE = "lineage.json"


def find_repo_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder above ``start`` holding data.dvc (the project root), or None."""
    p = Path(start or os.getcwd()).resolve()
    for cand in [p, *p.parents]:
        if (cand / "data.dvc").exists():
            return cand
    return None


def data_version(dvc_file: str | os.PathLike | None = None) -> str:
    """The md5 recorded in data.dvc (e.g. ``3f2a...e1.dir``); 'untracked' when no data.dvc is found.
    HARDNEG_DATA_VERSION wins when no file is named (pipeline pods run without the repo; the pipeline passes it)."""
    if dvc_file is None and os.environ.get("HARDNEG_DATA_VERSION"):
        return os.environ["HARDNEG_DATA_VERSION"]
    if dvc_file is None:
        root = find_repo_root()
        if root is None:
            return "untracked"
        dvc_file = root / "data.dvc"
    p = Path(dvc_file)
    try:
        meta = yaml.safe_load(p.read_text(encoding="utf-8"))
        return str(meta["outs"][0]["md5"])
    except FileNotFoundError:
        return "untracked"
    except (KeyError, IndexError, TypeError, yaml.YAMLError) as e:
        raise HardnegError(f"{p}: cannot read the data version ({e})") from None


# what a benchmark rewrites while it runs (its JSON results, README's generated blocks): `git_commit(ignore=...)` of a
# benchmark's stamp leaves them out, so a clean checkout's run is not stamped -dirty by its own outputs
BENCHMARK_OUTPUTS = ("benchmarks/results", "README.md")


def git_commit(cwd: str | os.PathLike | None = None, ignore: Sequence[str] = ()) -> str:
    """HEAD commit (suffixed '-dirty' when tracked files changed); 'unknown' outside git. HARDNEG_GIT_COMMIT wins
    (container images have no .git). ``ignore``: paths (from the repository root) whose changes do not make it
    dirty: a benchmark's own result files, which it rewrites while it runs."""
    env = os.environ.get("HARDNEG_GIT_COMMIT")
    if env:
        return env
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ":/",
                *(f":(top,exclude){p}" for p in ignore),
            ],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def sha256_dir(path: str | os.PathLike) -> str:
    """Hash of a folder's files (relative names + contents), order-independent of the filesystem."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


@dataclass
class Lineage:
    data_version: str
    git_commit: str
    params_hash: str
    inputs: dict[str, str] = field(
        default_factory=dict
    )  # e.g. {"negatives_sha256": ..., "model_fingerprint": ...}
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. metrics

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Lineage:
        return cls(
            data_version=d["data_version"],
            git_commit=d["git_commit"],
            params_hash=d["params_hash"],
            inputs=dict(d.get("inputs", {})),
            extra=dict(d.get("extra", {})),
        )

    def derive(self, **inputs: str) -> Lineage:
        """A copy with more input hashes (a later stage adds what it consumed)."""
        return Lineage(
            self.data_version, self.git_commit, self.params_hash, {**self.inputs, **inputs}, dict(self.extra)
        )


def current_lineage(
    params: dict[str, Any] | None = None, dvc_file: str | os.PathLike | None = None
) -> Lineage:
    from hardneg.config import params_hash

    return Lineage(
        data_version=data_version(dvc_file),
        git_commit=git_commit(),
        params_hash=params_hash(params) if params is not None else "none",
    )


def write_lineage(folder: str | os.PathLike, lineage: Lineage) -> Path:
    p = Path(folder) / LINEAGE_FILE
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(lineage.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return p


def read_lineage(folder: str | os.PathLike) -> Lineage:
    p = Path(folder) / LINEAGE_FILE
    if not p.exists():
        raise HardnegError(f"no {LINEAGE_FILE} in {folder}: not a hardneg artifact")
    return Lineage.from_dict(json.loads(p.read_text(encoding="utf-8")))
