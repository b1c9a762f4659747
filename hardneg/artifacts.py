"""Artifact I/O: atomic writes, JSON / JSONL / run readers with one error handling, and per-folder checksums.

Every stage output folder (embeddings, reduced, mined, model, export) is built in a hidden staging sibling
(``.<name>.partial-<pid>-<token>``) and published by :func:`staged_output`: ``checksums.sha256`` (``sha256sum -c``
format) is written last, then the folder replaces the previous one by two renames under a lock file. So a killed
or failed run (SIGKILL, disk full) leaves the previous output as it was; two runs of one stage on one folder both
finish and the last one wins (identical content, the stages are deterministic). Readers call
:func:`verify_checksums`: a missing or modified file is refused with a message naming it and the command to rerun.
A folder without ``checksums.sha256`` (written by an older hardneg, or by hand) is read with a warning.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hardneg.errors import ArtifactError, DataFormatError, DiskFullError, HardnegError

log = logging.getLogger(__name__)

CHECKSUMS_FILE = "checksums.sha256"
# the on-disk names every module shares (one definition each)
NEGATIVES_FILE = "negatives.jsonl"  # hardneg mine: one row per (query, positive)
TRAIN_METRICS_FILE = "train_metrics.json"  # hardneg train: steps, curves, config
METRICS_FILE = "metrics.json"  # hardneg evaluate
FUSION_FILE = "fusion.json"  # hardneg evaluate -> its own output: the served fusion (weight, gate, depth), read by export
METADATA_FILE = "metadata.json"  # hardneg export: what the server needs, lineage, sha256 of every other file
# (the model card, hardneg_model.json, is hardneg.model_card.CARD_FILE: that module owns the folder's contract)

Run = dict[str, dict[str, float]]  # a ranking: {query_id: {doc_id: score}}
_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_NO_SPACE_TEXT = ("No space left on device", "File too large", "Disk quota exceeded")
_RERUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("hardneg_rerun", default=None)


# ------------------------------------------------------------------------------------------------ atomic writes


def is_no_space(exc: BaseException) -> bool:
    """True for a write that failed for lack of space (also when a library re-wrapped the OSError)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            return True
        if any(t in str(e) for t in _NO_SPACE_TEXT):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full(path: str | os.PathLike, exc: BaseException, rerun: str | None = None) -> DiskFullError:
    hint = rerun or _RERUN.get()
    rerun = f"`{hint}`" if hint else "the stage"
    return DiskFullError(
        f"no space left writing {path} ({exc}): free disk space and rerun {rerun}; "
        "the previous output was left as it was"
    )


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None]) -> None:
    """Write ``path`` through ``write(binary file)`` into a temp file, fsync, then ``os.replace``: readers see the
    old or the new file, never a torn one. A full disk raises :class:`DiskFullError` (the old file stays)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise disk_full(path, e) from e
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Sequence[Any]) -> None:
    def write(fh: Any) -> None:
        for r in rows:
            fh.write((json.dumps(r, ensure_ascii=False) + "\n").encode("utf-8"))

    atomic_write(path, write)


def atomic_save_npy(path: str | os.PathLike, arr: Any) -> None:
    import numpy as np

    atomic_write(path, lambda fh: np.save(fh, arr, allow_pickle=False))


# ------------------------------------------------------------------------------------------------------ readers


def _missing(p: Path, rerun: str | None) -> HardnegError:
    return HardnegError(f"{p} not found" + (f": run `{rerun}` first" if rerun else ""))


def read_json(path: str | os.PathLike, *, rerun: str | None = None) -> Any:
    """A JSON file; a missing or unreadable one raises a :class:`HardnegError` naming it (and ``rerun``)."""
    p = Path(path)
    if not p.exists():
        raise _missing(p, rerun)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fix = f": rerun `{rerun}`" if rerun else ""
        raise DataFormatError(p, f"cannot read JSON ({getattr(e, 'msg', e)}){fix}") from None


def read_jsonl(
    path: str | os.PathLike, *, required: Sequence[str] = (), rerun: str | None = None
) -> list[dict[str, Any]]:
    """Rows of a JSONL file (blank lines skipped; an empty file has none); a bad line or a row without a
    ``required`` field raises :class:`DataFormatError` with the file and line number. The one JSONL parser is
    :func:`hardneg.data.iter_jsonl` (strict UTF-8 per line, CRLF accepted)."""
    from hardneg.data import iter_jsonl

    p = Path(path)
    if not p.exists():
        raise _missing(p, rerun)
    if p.stat().st_size == 0:
        return []
    return [row for _, row in iter_jsonl(p, tuple(required))]


def read_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """A run file ``{query_id: {doc_id: score}}`` (a folder means its ``run.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / "run.json"
    obj = read_json(p)
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise DataFormatError(p, "a run must be {query_id: {doc_id: score}}")
    try:
        return {str(q): {str(d): float(s) for d, s in docs.items()} for q, docs in obj.items()}
    except (TypeError, ValueError) as e:
        raise DataFormatError(p, f"a run must map doc ids to numbers ({e})") from None


# ---------------------------------------------------------------------------------------------------- checksums


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while b := fh.read(chunk):
            h.update(b)
    return h.hexdigest()


def _listed_files(folder: Path) -> list[str]:
    """Relative names of the files a checksum manifest covers: all but hidden ones (temp files, caches, locks)."""
    names = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if p.is_file() and rel.as_posix() != CHECKSUMS_FILE and not any(s.startswith(".") for s in rel.parts):
            names.append(rel.as_posix())
    return sorted(names)


def write_checksums(folder: str | os.PathLike) -> Path:
    """Write ``folder/checksums.sha256`` (``sha256sum -c`` format) over the folder's files, atomically: the last
    step of a stage, so its presence means every listed file was complete."""
    root = Path(folder)
    lines = [f"{sha256_file(root / n)}  {n}\n" for n in _listed_files(root)]
    atomic_write_text(root / CHECKSUMS_FILE, "".join(lines))
    return root / CHECKSUMS_FILE


def read_checksums(folder: str | os.PathLike, rerun: str = "the stage") -> dict[str, str] | None:
    """``{relative name: sha256}`` of ``folder/checksums.sha256``; None when the folder has none."""
    p = Path(folder) / CHECKSUMS_FILE
    if not p.exists():
        return None
    out: dict[str, str] = {}
    for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64 or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactError(f"{p}:{i}: malformed checksum line: rerun `{rerun}`")
        out[name] = digest
    return out


_VERIFIED: set[tuple] = set()


def verify_checksums(folder: str | os.PathLike, rerun: str, required: Sequence[str] = ()) -> None:
    """Check every file listed in ``folder/checksums.sha256``; raise :class:`ArtifactError` naming the first missing
    or modified file and ``rerun`` (the command that rebuilds it). ``required`` names must be listed. Memoised per
    (file sizes, mtimes) so repeated loads of an unchanged folder do not re-hash."""
    root = Path(folder)
    listed = read_checksums(root, rerun)
    if listed is None:
        if root.is_dir():
            log.warning("%s has no %s (an older or hand-made output): not verified", root, CHECKSUMS_FILE)
        return
    for name in required:
        if name not in listed:
            raise ArtifactError(f"{root / name} is not listed in {root / CHECKSUMS_FILE}: rerun `{rerun}`")
    stats = []
    for name in sorted(listed):
        try:
            st = (root / name).stat()
        except FileNotFoundError:
            raise ArtifactError(
                f"{root / name} is missing (listed in {CHECKSUMS_FILE}): the output is incomplete; rerun `{rerun}`"
            ) from None
        stats.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    key = (str(root.resolve()), tuple(sorted(listed.items())), tuple(stats))
    if key in _VERIFIED:
        return
    for name, digest in sorted(listed.items()):
        if sha256_file(root / name) != digest:
            raise ArtifactError(
                f"{root / name} is corrupt (its sha256 differs from {CHECKSUMS_FILE}): rerun `{rerun}`"
            )
    _VERIFIED.add(key)


# ------------------------------------------------------------------------------------------- staged publication


@contextlib.contextmanager
def _dir_lock(out: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``.<name>.lock`` next to ``out`` (released when the process dies)."""
    lock = out.parent / f".{out.name}.lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale(out: Path) -> None:
    """Remove the staging / old folders that dead processes left next to ``out``; if a process died between the
    two renames of a publication (``out`` gone, its previous version parked), put the previous version back."""
    for kind in ("old", "partial"):
        for p in sorted(out.parent.glob(f".{out.name}.{kind}-*")):
            pid = p.name.rsplit("-", 2)[-2]
            if not pid.isdigit() or _pid_alive(int(pid)):
                continue
            if kind == "old" and not out.exists():
                with contextlib.suppress(OSError):
                    os.rename(p, out)
                    log.warning("restored %s from an interrupted publication", out)
                    continue
            shutil.rmtree(p, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(staging: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write ``staging``'s checksums, then make it ``out_dir`` (the previous ``out_dir`` is removed), under a lock so
    concurrent publishers of one folder take turns (last one wins)."""
    staging, out = Path(staging), Path(out_dir)
    write_checksums(staging)
    old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    with _dir_lock(out):
        _clean_stale(out)
        if out.exists() or out.is_symlink():
            os.rename(out, old)
        try:
            os.rename(staging, out)
        except BaseException:
            if old.exists() and not out.exists():
                os.rename(old, out)
            raise
        _fsync_dir(out.parent)
    shutil.rmtree(old, ignore_errors=True)
    return out


@contextlib.contextmanager
def staged_output(out_dir: str | os.PathLike, rerun: str) -> Iterator[Path]:
    """Yield a fresh staging folder to write a stage's output into; on success publish it as ``out_dir``
    (:func:`publish_dir`), on failure remove it (``out_dir`` untouched). ``rerun`` is the command named in
    messages (disk full, corrupt output)."""
    out = Path(out_dir).absolute()  # a library may change the working directory meanwhile
    if out.exists() and not out.is_dir():
        raise HardnegError(f"{out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _dir_lock(out):
        _clean_stale(out)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    token = _RERUN.set(rerun)
    try:
        yield staging
        publish_dir(staging, out)
    except BaseException as e:
        shutil.rmtree(staging, ignore_errors=True)
        if is_no_space(e) and not isinstance(e, DiskFullError):
            raise disk_full(out, e) from e
        raise
    finally:
        _RERUN.reset(token)
