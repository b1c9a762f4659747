"""BEIR-layout I/O: ``corpus.jsonl``, ``queries.jsonl``, ``qrels/{split}.tsv``.

One data contract (as BEIR): documents and queries keyed by string id, qrels as ``{query_id: {doc_id: score}}``.
Readers stream line by line (``iter_corpus``) so a large corpus is never held as raw text plus parsed copies; loaders
that return dicts hold exactly one parsed copy. Malformed input raises :class:`DataFormatError` naming file and line.

Public collections are accepted as published: Windows (CRLF) line endings are normalised on read (counted in a
:class:`ReadStats` when one is passed, so validation can warn), ``load_dataset`` drops empty documents / queries
(and the qrels rows pointing at them) unless told to refuse them, and :func:`carve_dev_split` carves a seeded dev
split out of train when a collection ships none (:func:`load_dataset_for` does both from params).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hardneg.errors import ConfigError, DataFormatError

log = logging.getLogger(__name__)

QRELS_HEADER = ("query-id", "corpus-id", "score")
SPLITS = ("train", "dev", "test")
EMPTY_POLICIES = ("drop", "refuse")
MAX_LOGGED_IDS = 5


@dataclass(slots=True)
class ReadStats:
    """Filled by a reader when passed one: how many lines ended in CRLF (normalised to LF) and the first such line."""

    lines: int = 0
    crlf_lines: int = 0
    first_crlf_line: int | None = None


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
    # what load_dataset left out (empty documents / queries and the qrels rows pointing at them); {} when nothing
    dropped: dict[str, Any] = field(default_factory=dict)

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


def _iter_lines(path: Path, stats: ReadStats | None = None) -> Iterator[tuple[int, str]]:
    """Yield ``(lineno, line)`` with each line decoded on its own (strict UTF-8), so a bad byte is reported on its own
    line (a text-mode reader decodes 8 KiB chunks and would blame an earlier line). The line ending is kept, with
    CRLF normalised to LF (public BEIR files are published with CRLF); ``stats`` counts such lines."""
    if not path.exists():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "file is empty")
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if raw.endswith(b"\r\n"):
                raw = raw[:-2] + b"\n"
                if stats is not None:
                    stats.crlf_lines += 1
                    if stats.first_crlf_line is None:
                        stats.first_crlf_line = lineno
            if stats is not None:
                stats.lines = lineno
            try:
                yield lineno, raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    path, f"not valid UTF-8 ({e.reason} at byte {e.start} of the line)", lineno
                ) from None


def iter_jsonl(
    path: Path, required: tuple[str, ...], stats: ReadStats | None = None
) -> Iterator[tuple[int, dict]]:
    """``(lineno, object)`` of each non-blank line of a JSONL file: the one JSONL parser (corpus, queries, and the
    stages' JSONL outputs through :func:`hardneg.artifacts.read_jsonl`). A BOM, bad UTF-8 or JSON, a non-object line
    or a missing ``required`` field raises :class:`DataFormatError` naming the file and line."""
    for lineno, line in _iter_lines(path, stats):
        if lineno == 1 and line.startswith("\ufeff"):
            raise DataFormatError(
                path, "starts with a UTF-8 byte-order mark (BOM); save the file without BOM", 1
            )
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


def iter_corpus(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[Document]:
    """Stream documents from a ``corpus.jsonl`` (one parsed document at a time)."""
    p = Path(path)
    for lineno, obj in iter_jsonl(p, ("_id", "text"), stats):
        yield Document(
            id=_as_id(p, lineno, obj["_id"]),
            text=_as_text(p, lineno, obj, "text"),
            title=_as_text(p, lineno, obj, "title"),
            metadata=obj.get("metadata") or {},
        )


def iter_queries(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[Query]:
    p = Path(path)
    for lineno, obj in iter_jsonl(p, ("_id", "text"), stats):
        yield Query(
            id=_as_id(p, lineno, obj["_id"]),
            text=_as_text(p, lineno, obj, "text"),
            metadata=obj.get("metadata") or {},
        )


def iter_qrels(path: str | os.PathLike, stats: ReadStats | None = None) -> Iterator[tuple[str, str, int]]:
    """Stream ``(query_id, doc_id, score)`` rows of a qrels TSV, checking header, delimiter and score type."""
    p = Path(path)
    lines = _iter_lines(p, stats)
    _, header = next(lines)  # the file is not empty (checked by _iter_lines)
    if header.startswith("\ufeff"):
        raise DataFormatError(p, "starts with a UTF-8 byte-order mark (BOM); save the file without BOM", 1)
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


def _check_policy(key: str, value: str) -> str:
    if value not in EMPTY_POLICIES:
        raise ConfigError(
            f"validate.{key} must be one of {' | '.join(EMPTY_POLICIES)}, got {value!r} (params.yaml)"
        )
    return value


def _empty_ids(items: Iterable[Document | Query]) -> list[str]:
    """Ids whose text (title + text for documents) is empty or whitespace, as validation counts them."""
    return [x.id for x in items if not (x.full_text if isinstance(x, Document) else x.text).strip()]


def load_dataset(
    root: str | os.PathLike,
    splits: Iterable[str] | None = None,
    *,
    empty_documents: str = "drop",
    empty_queries: str = "drop",
) -> BeirDataset:
    """Load a BEIR folder. ``splits=None`` loads every ``qrels/*.tsv`` present.

    Empty documents (empty title and text) and empty queries: ``"drop"`` (default, as ``validate.empty_documents`` /
    ``validate.empty_queries``) leaves them out, with every qrels row that points at one (the counts and first ids are
    in ``dataset.dropped`` and logged); ``"refuse"`` raises :class:`DataFormatError` naming the setting.
    """
    _check_policy("empty_documents", empty_documents)
    _check_policy("empty_queries", empty_queries)
    r = Path(root)
    if not r.is_dir():
        raise DataFormatError(r, "dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/)")
    names = list(splits) if splits is not None else available_splits(r)
    if not names:
        raise DataFormatError(r / "qrels", "no qrels/*.tsv files found")
    ds = BeirDataset(
        root=r,
        corpus=load_corpus(r / "corpus.jsonl"),
        queries=load_queries(r / "queries.jsonl"),
        qrels={s: load_qrels(r / "qrels" / f"{s}.tsv") for s in names},
    )
    empty_docs, empty_qs = _empty_ids(ds.corpus.values()), _empty_ids(ds.queries.values())
    for key, ids, policy, file, what in (
        ("empty_documents", empty_docs, empty_documents, "corpus.jsonl", "documents (empty title and text)"),
        ("empty_queries", empty_qs, empty_queries, "queries.jsonl", "queries (empty text)"),
    ):
        if ids and policy == "refuse":
            raise DataFormatError(
                r / file,
                f"{len(ids)} empty {what}, e.g. {ids[:MAX_LOGGED_IDS]}; set validate.{key}: drop in params.yaml "
                "to leave them out (with the qrels rows pointing at them)",
            )
    if empty_docs or empty_qs:
        _drop_empty(ds, empty_docs, empty_qs)
    return ds


def _drop_empty(ds: BeirDataset, empty_docs: list[str], empty_qs: list[str]) -> None:
    """Remove empty documents / queries and the qrels rows pointing at them (in place); record it in ``dropped``."""
    for i in empty_docs:
        del ds.corpus[i]
    for i in empty_qs:
        del ds.queries[i]
    bad_docs, bad_qs = set(empty_docs), set(empty_qs)
    rows: dict[str, int] = {}
    for split, qrels in ds.qrels.items():
        kept: Qrels = {}
        n = 0
        for q, docs in qrels.items():
            if q in bad_qs:
                n += len(docs)
                continue
            keep = {d: s for d, s in docs.items() if d not in bad_docs}
            n += len(docs) - len(keep)
            if keep:
                kept[q] = keep
        if n:
            rows[split] = n
            ds.qrels[split] = kept
    for key, ids in (("empty_documents", empty_docs), ("empty_queries", empty_qs)):
        if ids:
            ds.dropped[key] = {"count": len(ids), "ids": ids[:MAX_LOGGED_IDS]}
            log.warning(
                "%s: dropped %d %s (validate.%s: drop), e.g. %s",
                ds.root,
                len(ids),
                key.replace("_", " "),
                key,
                ", ".join(ids[:MAX_LOGGED_IDS]),
            )
    if rows:
        ds.dropped["qrels_rows"] = rows
        log.warning(
            "%s: dropped %d qrels row(s) pointing at them (%s)",
            ds.root,
            sum(rows.values()),
            ", ".join(f"{s}: {n}" for s, n in rows.items()),
        )


def _dev_order_key(seed: int, query_id: str) -> str:
    return hashlib.sha256(f"{seed}\t{query_id}".encode()).hexdigest()


def carve_dev_split(
    dataset: BeirDataset,
    dev_split: str = "dev",
    train_split: str = "train",
    fraction: float = 0.1,
    seed: int = 13,
    max_queries: int | None = 500,
    min_score: int = 1,
) -> tuple[BeirDataset, dict[str, Any]]:
    """When ``dev_split`` is absent, move a seeded subset of the train queries (whole queries: all their qrels rows)
    into a new dev split, in memory. Pure: ``dataset`` is not modified; a new :class:`BeirDataset` is returned
    (sharing the unchanged parts) with a record of what was done.

    Only train queries with a positive (score >= ``min_score``) are eligible; ``round(fraction * eligible)`` of them
    (at least 1, at most ``max_queries``, always leaving one in train) are chosen by sha256(seed, query id), so the
    choice depends on neither file order nor Python version, and a larger fraction extends a smaller one's set.

    Record: ``{"carved": False}`` when the dev split exists, else ``{"carved": True, "split", "from", "fraction",
    "seed", "max_queries", "queries", "rows", "train_queries_left", "query_ids_sha256"}`` (sha256 of the sorted dev
    query ids joined by newlines).
    """
    if dev_split in dataset.qrels:
        return dataset, {"carved": False}
    if not 0.0 < float(fraction) < 1.0:
        raise ConfigError(f"data.dev_fraction must be in (0, 1), got {fraction!r} (params.yaml)")
    if max_queries is not None and int(max_queries) < 1:
        raise ConfigError(f"data.dev_max_queries must be >= 1 or null, got {max_queries!r} (params.yaml)")
    qrels_dir = Path(dataset.root) / "qrels"
    if train_split not in dataset.qrels:
        raise DataFormatError(
            qrels_dir,
            f"no '{dev_split}' split and no '{train_split}' split to carve it from (have: {sorted(dataset.qrels)}); "
            f"add qrels/{dev_split}.tsv or qrels/{train_split}.tsv, or set data.dev_split / data.train_split in "
            "params.yaml",
        )
    train = dataset.qrels[train_split]
    eligible = [q for q, docs in train.items() if any(s >= min_score for s in docs.values())]
    if len(eligible) < 2:
        raise DataFormatError(
            qrels_dir / f"{train_split}.tsv",
            f"{len(eligible)} train quer(y/ies) with a positive: too few to carve a '{dev_split}' split from; "
            f"add qrels/{dev_split}.tsv",
        )
    n = max(1, round(float(fraction) * len(eligible)))
    if max_queries is not None:
        n = min(n, int(max_queries))
    n = min(n, len(eligible) - 1)
    chosen = set(sorted(eligible, key=lambda q: _dev_order_key(int(seed), q))[:n])
    dev = {q: dict(docs) for q, docs in train.items() if q in chosen}
    left = {q: docs for q, docs in train.items() if q not in chosen}
    out = replace(dataset, qrels={**dataset.qrels, train_split: left, dev_split: dev})
    record = {
        "carved": True,
        "split": dev_split,
        "from": train_split,
        "fraction": float(fraction),
        "seed": int(seed),
        "max_queries": None if max_queries is None else int(max_queries),
        "queries": len(dev),
        "rows": sum(len(v) for v in dev.values()),
        "train_queries_left": len(left),
        "query_ids_sha256": hashlib.sha256("\n".join(sorted(dev)).encode()).hexdigest(),
    }
    log.info(
        "%s: no %s split: carved %d of %d %s queries (data.dev_fraction %g, data.dev_seed %d, data.dev_max_queries %s)",
        dataset.root,
        dev_split,
        len(dev),
        len(train),
        train_split,
        float(fraction),
        int(seed),
        max_queries,
    )
    return out, record


def load_dataset_for(
    data_dir: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    splits: Mapping[str, Any] | None = None,
) -> tuple[BeirDataset, dict[str, Any]]:
    """Load a BEIR folder as the pipeline stages see it: empty documents / queries handled per
    ``validate.empty_documents`` / ``validate.empty_queries``, and the train / dev split: ``splits`` (the
    :func:`split_assignment` that ``hardneg retrieve`` wrote, applied as is), else made here by
    :func:`prepare_splits` (a dev split carved from train when the folder has none, then topped up). Returns the
    dataset and the record (``{"carved": False, "top_up": ...}`` when the folder has a dev split)."""
    if params is None:
        from hardneg.config import load_params

        params = load_params()
    from hardneg.settings import settings

    s = settings(params)
    ds = load_dataset(
        data_dir, empty_documents=s.validate.empty_documents, empty_queries=s.validate.empty_queries
    )
    if splits is not None:
        return apply_split_assignment(ds, splits, "the retrieve stage's splits"), dict(splits["record"])
    return prepare_splits(ds, params)


def prepare_splits(ds: BeirDataset, params: Mapping[str, Any]) -> tuple[BeirDataset, dict[str, Any]]:
    """The splits every stage sees: a dev split carved from train when there is none, then topped up from train
    (``data.*``). Returns the new dataset (``ds`` is not modified) and the record."""
    from hardneg.settings import settings

    d = settings(params).data
    ds = replace(ds, qrels={k: dict(v) for k, v in ds.qrels.items()})
    ds, record = carve_dev_split(
        ds,
        dev_split=d.dev_split,
        train_split=d.train_split,
        fraction=d.dev_fraction,
        seed=d.dev_seed,
        max_queries=d.dev_max_queries,
    )
    record["top_up"] = top_up_dev_split(
        ds,
        dev_split=d.dev_split,
        train_split=d.train_split,
        min_queries=d.dev_min_queries,
        max_fraction=d.dev_max_fraction,
        seed=d.dev_seed,
    )
    return ds, record


def top_up_dev_split(
    dataset: BeirDataset,
    dev_split: str = "dev",
    train_split: str = "train",
    min_queries: int = 200,
    max_fraction: float = 0.25,
    seed: int = 13,
) -> dict[str, Any]:
    """Move whole train queries into ``dev_split`` (in place, chosen in sha256(seed, query id) order) until dev has
    ``min_queries`` queries with a positive, moving at most ``max_fraction`` of the train queries. A dev split of ~80
    queries cannot separate configurations 0.01-0.02 MRR@10 apart (one rank move of one query is ~0.006), and every
    choice (checkpoint, fusion weight, ensemble weights, policy) is made on dev. Returns ``{"moved": n, ...}``."""
    if not 0.0 <= max_fraction < 1.0 or min_queries < 0:
        raise ConfigError(
            f"need data.dev_min_queries >= 0 and data.dev_max_fraction in [0, 1), got {min_queries}, {max_fraction}"
        )
    dev = dataset.qrels.get(dev_split, {})
    train = dataset.qrels.get(train_split, {})
    have = sum(1 for docs in dev.values() if any(s >= 1 for s in docs.values()))
    eligible = sorted(
        (q for q, docs in train.items() if any(s >= 1 for s in docs.values())),
        key=lambda q: _dev_order_key(seed, q),
    )
    n = max(0, min(min_queries - have, int(max_fraction * len(eligible))))
    moved = sorted(eligible[:n])
    if moved:
        dataset.qrels[dev_split] = {**dev, **{q: dict(train[q]) for q in moved}}
        gone = set(moved)
        dataset.qrels[train_split] = {q: docs for q, docs in train.items() if q not in gone}
        log.info(
            "%s: dev topped up with %d train queries to %d (data.dev_min_queries %d, data.dev_seed %d)",
            dataset.root,
            n,
            have + n,
            min_queries,
            seed,
        )
    return {
        "dev_queries_before": have,
        "moved": n,
        "dev_queries": have + n,
        "min_queries": min_queries,
        "max_fraction": max_fraction,
        "seed": seed,
        "moved_ids_sha256": hashlib.sha256("\n".join(moved).encode()).hexdigest() if moved else None,
    }


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


def split_assignment(ds: BeirDataset, record: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """What :func:`prepare_splits` decided, as data the later stages apply (``hardneg retrieve`` writes it to
    ``splits.json``): the train and dev query ids after the carve and top-up, their sha256, and the record."""
    from hardneg.settings import settings

    d = settings(params).data
    ids = {s: sorted(ds.qrels.get(s, {})) for s in (d.train_split, d.dev_split)}
    return {
        "train_split": d.train_split,
        "dev_split": d.dev_split,
        "query_ids": ids,
        "query_ids_sha256": {s: hashlib.sha256("\n".join(q).encode()).hexdigest() for s, q in ids.items()},
        "record": dict(record),
    }


def apply_split_assignment(ds: BeirDataset, assignment: Mapping[str, Any], source: str) -> BeirDataset:
    """``ds`` (as loaded from its folder) with the train / dev split of ``assignment`` (:func:`split_assignment`):
    each query keeps the qrels rows it has in the folder's train or dev file. ``source`` names the file in errors.
    A query id the folder does not have (another dataset, or edited qrels) is refused."""
    train, dev = assignment["train_split"], assignment["dev_split"]
    pool: dict[str, dict[str, int]] = {}
    for s in (train, dev):
        for q, docs in ds.qrels.get(s, {}).items():
            pool.setdefault(q, dict(docs))
    qrels = {k: dict(v) for k, v in ds.qrels.items()}
    for s in (train, dev):
        ids = list(assignment["query_ids"][s])
        missing = [q for q in ids if q not in pool]
        if missing:
            raise DataFormatError(
                Path(ds.root) / "qrels",
                f"{len(missing)} {s} queries of {source} are not in this dataset's {train}/{dev} qrels "
                f"(e.g. {missing[:MAX_LOGGED_IDS]}): the split was made for other data; rerun `hardneg retrieve`",
            )
        qrels[s] = {q: pool[q] for q in ids}
    return replace(ds, qrels=qrels)
