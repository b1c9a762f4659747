"""Bring your own corpus: ``hardneg pipeline run --data DIR`` validates DIR, places it under the DVC-tracked data
folder (``data/<name>``), ``dvc add``s it (``data.dvc`` gets the new data version; the DVC remote is only touched with
``push``), and tells the user what to commit afterwards.

Why the commit matters: every artifact's lineage (and so every KFP cache key) holds the git commit, and
``fetch-data`` reads the data through DVC at the version recorded in ``data.dvc``. A run on an uncommitted tree is
stamped ``<sha>-dirty``; once the new ``data.dvc`` is committed the commit changes and the next run recomputes every
task (the embedding cache still makes the embed step cheap).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hardneg.errors import DataValidationError, HardnegError
from hardneg.lineage import data_version, git_commit, sha256_dir

BUNDLED = "data/scifact"  # the demo corpus: never overwritten by a corpus of the same name


class CorpusValidationError(DataValidationError):
    """``--data DIR`` failed validation; ``report`` is the full :class:`~hardneg.validate.ValidationReport`."""

    def __init__(self, message: str, report: Any):
        super().__init__(message)
        self.report = report


@dataclass
class PreparedCorpus:
    source: Path
    data_dir: str  # relative to the project (POSIX), e.g. "data/fiqa": the run's params data.dir
    action: str  # "copied" | "replaced" | "unchanged" | "in place"
    data_version: str  # md5 in data.dvc after `dvc add`
    previous_version: str
    pushed: bool
    warnings: int
    dvc_file: str = "data.dvc"
    to_commit: list[str] = field(default_factory=list)  # files the preparation changed that git should record

    @property
    def changed(self) -> bool:
        return self.data_version != self.previous_version


def _dvc() -> list[str]:
    exe = Path(sys.executable).parent / "dvc"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("dvc")
    return [found] if found else [sys.executable, "-m", "dvc"]


def _run(cmd: list[str], repo: Path, what: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    r = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        tail = "\n  ".join((r.stderr or r.stdout).strip().splitlines()[-8:])
        raise HardnegError(f"`{' '.join(cmd[-2:])}` failed ({what}):\n  {tail}")


def _tracked_dir(repo: Path) -> tuple[Path, str]:
    """The folder data.dvc tracks (``data``) and the DVC file's name."""
    dvc_file = repo / "data.dvc"
    if not dvc_file.exists():
        raise HardnegError(f"{dvc_file} not found: run from the project root (hardneg tracks data/ with DVC)")
    if not (repo / ".dvc").is_dir():
        raise HardnegError(f"{repo} is not a DVC project (no .dvc/): run `dvc init` first")
    try:
        rel = yaml.safe_load(dvc_file.read_text(encoding="utf-8"))["outs"][0]["path"]
    except (KeyError, IndexError, TypeError, yaml.YAMLError) as e:
        raise HardnegError(f"{dvc_file}: cannot read the tracked path ({e})") from None
    return (repo / rel).resolve(), dvc_file.name


def _git_changed(repo: Path, paths: list[str]) -> list[str]:
    """Those of ``paths`` git sees as modified or untracked (not ignored)."""
    try:
        r = subprocess.run(
            ["git", "status", "--porcelain", "--", *paths],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if r.returncode != 0:
        return []
    changed = {line[3:].strip().strip('"') for line in r.stdout.splitlines() if len(line) > 3}
    return [p for p in paths if p in changed]


def prepare_corpus(
    src: str | os.PathLike,
    params: dict[str, Any],
    repo: str | os.PathLike = ".",
    *,
    name: str | None = None,
    push: bool = False,
) -> PreparedCorpus:
    """Validate ``src`` (the ``hardneg validate`` checks; a failure raises :class:`CorpusValidationError` before
    anything is copied), place it at ``data/<name>`` (default: the folder's name; a folder already under ``data/``
    stays where it is), ``dvc add data`` and, with ``push``, ``dvc push data.dvc``."""
    from hardneg.validate import validate_dataset

    repo = Path(repo).resolve()
    data_root, dvc_name = _tracked_dir(repo)
    source = Path(src).expanduser().resolve()
    report = validate_dataset(source, params)
    if not report.success:
        raise CorpusValidationError(
            f"{src} failed validation ({len(report.failures)} check(s)): nothing was copied, added to DVC or run",
            report,
        )

    if source == data_root:
        raise HardnegError(
            f"--data {src}: pass the corpus folder itself (BEIR layout), not the whole data folder"
        )
    if not source.is_relative_to(data_root):
        name = name or source.name
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise HardnegError(f"--name {name!r}: give a plain folder name (it becomes data/<name>)")
        dest = data_root / name
        rel = dest.relative_to(repo).as_posix()
        if dest.exists() and sha256_dir(dest) == sha256_dir(source):
            action = "unchanged"
        elif dest.exists() and rel == BUNDLED:
            raise HardnegError(f"{rel} is the bundled demo corpus: pass --name to place {src} elsewhere")
        else:
            action = "replaced" if dest.exists() else "copied"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git", ".dvc", "__pycache__"))
    else:  # already inside data/ (e.g. a rerun with --data data/<name>)
        dest, action = source, "in place"
        rel = dest.relative_to(repo).as_posix()

    dvc_file = repo / dvc_name
    before = data_version(dvc_file)
    _run([*_dvc(), "add", "-q", data_root.relative_to(repo).as_posix()], repo, "tracking the data with DVC")
    after = data_version(dvc_file)
    if push:
        _run([*_dvc(), "push", "-q", dvc_name], repo, "pushing the data to the DVC remote")
    gitignore = (data_root.parent / ".gitignore").relative_to(repo).as_posix()
    return PreparedCorpus(
        source=source,
        data_dir=rel,
        action=action,
        data_version=after,
        previous_version=before,
        pushed=push,
        warnings=len(report.warnings),
        dvc_file=dvc_name,
        to_commit=_git_changed(repo, [dvc_name, gitignore]),
    )


def commit_hint(repo: str | os.PathLike, prepared: PreparedCorpus | None = None) -> list[str]:
    """What to tell the user after a run: the exact ``git add`` (with ``--data``) and, when the tree has
    uncommitted changes, one line on why that matters for lineage and the KFP cache."""
    lines: list[str] = []
    if prepared is not None:
        if prepared.to_commit:
            files = " ".join(prepared.to_commit)
            lines.append(
                f"record the data this run used: git add {files} && "
                f'git commit -m "data: {prepared.data_dir} ({prepared.data_version[:8]})"'
            )
            lines.append(
                f"  ({prepared.dvc_file} holds the data's md5 and git holds {prepared.dvc_file}; the files stay in the "
                + (
                    "DVC cache and the DVC remote)"
                    if prepared.pushed
                    else "DVC cache: `dvc push` copies them to your DVC remote)"
                )
            )
        lines.append(
            f"  make it the default: data.dir: {prepared.data_dir} in params.yaml; "
            f"rerun: hardneg pipeline run --data {prepared.data_dir}"
        )
    commit = git_commit(repo)
    if commit.endswith("-dirty"):
        lines.append(
            f"uncommitted changes: every artifact's lineage holds the git commit, so this run is stamped "
            f"{commit[:7]}-dirty and the first run after you commit misses every KFP cache entry"
        )
    return lines
