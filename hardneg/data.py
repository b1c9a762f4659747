"""BEIR-layout I/O: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

One data contract (as BEIR): documents and queries keyed by string id, qrels as ``{query_id: {doc_id: score}}``.
Readers stream line by line (``iter_corpus``) so a large corpus is never held as raw text plus parsed copies; loaders
that return dicts hold exactly one parsed copy. Malformed input raises :class:`DataFormatError` naming file and line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hardneg.errors import DataFormatError

QRELS_HEADER = ("query-id", "corpus-id", "score")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    title: str = ""
    metadata: dict = field(default_factory=dict)

    @property
    def full_text(self) -> str:
        """Title and body joined, as the models see the document."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass(frozen=True, slots=True)
class Query:
    id: str
    text: str
    metadata: dict = field(default_factory=dict)


Qrels = dict[str, dict[str, int]]


@dataclass(slots=True)
class BeirDataset:
    """A loaded BEIR folder. ``qrels`` maps split name -> qrels for that split."""

    root: Path
    corpus: dict[str, Document]
    queries: dict[str, Query]
    qrels: dict[str, Qrels]

    def split_qrels(self, split: str, min_score: int = 1) -> Qrels:
        """Qrels of a split restricted to relevant pairs (score >= min_score)."""
        if split not in self.qrels:
            raise DataFormatError(
                self.root / "qrels", f"no qrels for split '{split}' (have: {sorted(self.qrels)})"
            )
        return {
            q: {d: s for d, s in docs.items() if s >= min_score}
            for q, docs in self.qrels[split].items()
            if any(s >= min_score for s in docs.values())
        }

    def all_positives(self, min_score: int = 1) -> dict[str, set[str]]:
        """Every labelled positive of every query, over all splits (for false-negative guards)."""
        out: dict[str, set[str]] = {}
        for split in self.qrels:
            for q, docs in self.split_qrels(split, min_score).items():
                out.setdefault(q, set()).update(docs)
        return out


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(lineno, line)`` with each line decoded on its own (strict UTF-8, line ending kept), so a bad byte is
    reported on its own line (a text-mode reader decodes 8 KiB chunks and would blame an earlier line)."""
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                yield lineno, raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    path, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", lineno
                ) from None


def _iter_jsonl(path: Path, required: tuple[str, ...]) -> Iterator[tuple[int, dict]]:
    for lineno, line in _iter_lines(path):
        if lineno == 1 and line.startswith("\ufeff"):
            raise DataFormatError(
                path, "starts with a UTF-8 byte-order mark (BOM); save the file without BOM", 1
            )
        if line.endswith("\r\n"):
            raise DataFormatError(path, "Windows (CRLF) line endings; convert to LF (e.g. dos2unix)", lineno)
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataFormatError(path, f"invalid JSON ({e.msg}, column {e.colno})", lineno) from None
        if not isinstance(obj, dict):
            raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", lineno)
        missing = [k for k in required if k not in obj]
        if missing:
            raise DataFormatError(path, f"missing field(s) {missing}", lineno)
        yield lineno, obj


def _as_id(path: Path, lineno: int, value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataFormatError(path, f"'_id' must be a string, got {type(value).__name__}", lineno)
    return str(value)


def _as_text(path: Path, lineno: int, obj: dict, key: str) -> str:
    value = obj.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataFormatError(path, f"'{key}' must be a string, got {type(value).__name__}", lineno)
    return value


def iter_corpus(path: str | os.PathLike) -> Iterator[Document]:
    """Stream documents from a ``corpus.jsonl`` (one parsed document at a time)."""
    p = Path(path)
    for lineno, obj in _iter_jsonl(p, ("_id", "text")):
        yield Document(
            id=_as_id(p, lineno, obj["_id"]),
            text=_as_text(p, lineno, obj, "text"),
            title=_as_text(p, lineno, obj, "title"),
            metadata=obj.get("metadata") or {},
        )


def iter_queries(path: str | os.PathLike) -> Iterator[Query]:
    p = Path(path)
    for lineno, obj in _iter_jsonl(p, ("_id", "text")):
        yield Query(
            id=_as_id(p, lineno, obj["_id"]),
            text=_as_text(p, lineno, obj, "text"),
            metadata=obj.get("metadata") or {},
        )


def iter_qrels(path: str | os.PathLike) -> Iterator[tuple[str, str, int]]:
    """Stream ``(query_id, doc_id, score)`` rows of a qrels TSV, checking header, delimiter and score type."""
    p = Path(path)
    lines = _iter_lines(p)
    _, header = next(lines)  # the file is not empty (checked by _iter_lines)
    if header.startswith("\ufeff"):
        raise DataFormatError(p, "starts with a UTF-8 byte-order mark (BOM); save the file without BOM", 1)
    if header.endswith("\r\n"):
        raise DataFormatError(p, "Windows (CRLF) line endings; convert to LF (e.g. dos2unix)", 1)
    cols = header.rstrip("\n").split("\t")
    if tuple(cols) != QRELS_HEADER:
        hint = (
            " (the file is not TAB-separated)" if len(cols) == 1 and ("," in header or " " in header) else ""
        )
        raise DataFormatError(
            p, f"header must be {'<TAB>'.join(QRELS_HEADER)!r}, got {header.strip()!r}{hint}", 1
        )
    for lineno, line in lines:
        if not line.strip():
            continue
        row = line.rstrip("\n").split("\t")
        if len(row) != 3:
            raise DataFormatError(p, f"expected 3 TAB-separated columns, got {len(row)}", lineno)
        q, d, s = row
        if s.endswith("\r"):
            raise DataFormatError(p, "Windows (CRLF) line endings; convert to LF (e.g. dos2unix)", lineno)
        try:
            score = int(s)
        except ValueError:
            raise DataFormatError(p, f"score must be an integer, got {s!r}", lineno) from None
        yield q, d, score


def load_corpus(path: str | os.PathLike) -> dict[str, Document]:
    return {d.id: d for d in iter_corpus(path)}


def load_queries(path: str | os.PathLike) -> dict[str, Query]:
    return {q.id: q for q in iter_queries(path)}


def load_qrels(path: str | os.PathLike) -> Qrels:
    out: Qrels = {}
    for q, d, s in iter_qrels(path):
        out.setdefault(q, {})[d] = s
    return out


def available_splits(root: str | os.PathLike) -> list[str]:
    qdir = Path(root) / "qrels"
    return sorted(p.stem for p in qdir.glob("*.tsv")) if qdir.is_dir() else []


def load_dataset(root: str | os.PathLike, splits: Iterable[str] | None = None) -> BeirDataset:
    """Load a BEIR folder. ``splits=None`` loads every ``qrels/*.tsv`` present."""
    r = Path(root)
    if not r.is_dir():
        raise DataFormatError(r, "dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/)")
    names = list(splits) if splits is not None else available_splits(r)
    if not names:
        raise DataFormatError(r / "qrels", "no qrels/*.tsv files found")
    return BeirDataset(
        root=r,
        corpus=load_corpus(r / "corpus.jsonl"),
        queries=load_queries(r / "queries.jsonl"),
        qrels={s: load_qrels(r / "qrels" / f"{s}.tsv") for s in names},
    )


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def save_corpus(path: str | os.PathLike, docs: Iterable[Document]) -> None:
    _write_jsonl(
        Path(path), ({"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata} for d in docs)
    )


def save_queries(path: str | os.PathLike, queries: Iterable[Query]) -> None:
    _write_jsonl(Path(path), ({"_id": q.id, "text": q.text, "metadata": q.metadata} for q in queries))


def save_qrels(path: str | os.PathLike, qrels: Qrels) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\t".join(QRELS_HEADER) + "\n")
        for q, docs in qrels.items():
            for d, s in docs.items():
                fh.write(f"{q}\t{d}\t{s}\n")


def save_dataset(ds: BeirDataset, root: str | os.PathLike) -> None:
    r = Path(root)
    save_corpus(r / "corpus.jsonl", ds.corpus.values())
    save_queries(r / "queries.jsonl", ds.queries.values())
    for split, qrels in ds.qrels.items():
        save_qrels(r / "qrels" / f"{split}.tsv", qrels)
