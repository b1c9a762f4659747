"""Data validation of a BEIR folder with Great Expectations (ephemeral context, pandas data source).

Two layers:

1. **Format** (``hardneg.data`` readers): bad JSON line, missing field, empty file, wrong delimiter, BOM, CRLF,
   non-UTF-8 bytes, non-integer score. A reader raises :class:`DataFormatError` (file + line); it becomes one
   ``format`` failure and the other files are still validated (checks that need the broken file are skipped).
2. **Content** (GX expectations on small per-file tables): corpus and queries are streamed once into
   ``_id`` / ``record`` / ``text_chars`` / ``text_clean`` columns (the texts themselves are never kept), qrels into
   ``query-id`` / ``corpus-id`` / ``score`` plus boolean columns (``query_known``, ``doc_known``,
   ``query_one_split``) checked with ``ExpectColumnValuesToBeInSet(value_set=[True])`` (a set of 200k ids inside
   the suite is ~40 s; the boolean column is ~0.1 s, docs/stack.md section 4).

Each expectation carries ``meta={"check": NAME}``; failed expectations become :class:`Failure` rows with a few example
ids, and every failure message ends with ``fix: ...`` (the params.yaml key to change, or what to do to the file).
The encoding check (U+FFFD / control characters) uses GX ``mostly``: up to ``validate.max_bad_encoding_frac``
of the rows may be affected (BEIR's SciFact, byte-identical to upstream, has 8 of 5,183 such abstracts); those rows
are reported as warnings, above the threshold the check fails. Validation only reads the input folder.

Public BEIR collections are accepted as published, with warnings: CRLF line endings (``line_endings``, normalised by
the readers), empty documents / queries under ``validate.empty_documents`` / ``validate.empty_queries: drop``
(``empty_text`` with GX ``mostly=0``, plus ``qrels_to_dropped`` for the qrels rows that go with them), and a missing
dev split (``no_dev_split``: ``hardneg.data.load_dataset_for`` carves one from train). Graded scores pass up to
``validate.score_max``.
"""

from __future__ import annotations

import logging
import math
import os
import re
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hardneg.data import ReadStats, available_splits, iter_corpus, iter_qrels, iter_queries
from hardneg.errors import DataFormatError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

# C0 controls except TAB/LF/CR, DEL, C1 controls (cp1252 bytes decoded as latin-1 land here), U+FFFD
BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd]")
MAX_EXAMPLES = 5

# which params.yaml key decides what happens to an empty text, per table
EMPTY_KEY = {"corpus": "empty_documents", "queries": "empty_queries"}


@dataclass(slots=True)
class Failure:
    """One failed check of one file. ``count`` is the number of rows failing (1 for a format error)."""

    file: str
    check: str
    count: int
    examples: list[str]
    message: str
    line: int | None = None  # format errors: the line the reader stopped at
    severity: str = "error"  # "error" fails validation; "warning" (below a `mostly` threshold) does not


@dataclass(slots=True)
class ValidationReport:
    root: str
    success: bool
    failures: list[Failure] = field(default_factory=list)
    warnings: list[Failure] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    gx: dict[str, dict[str, Any]] = field(default_factory=dict)  # per table: success, evaluated, successful
    data_docs: str | None = None  # index.html URL when Data Docs were built

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": self.root,
            "success": self.success,
            "failures": [asdict(f) for f in self.failures],
            "warnings": [asdict(f) for f in self.warnings],
            "stats": self.stats,
            "gx": self.gx,
            "data_docs": self.data_docs,
        }

    def checks(self, file: str | None = None) -> set[str]:
        """Names of the failed checks (of one file when ``file`` is given)."""
        return {f.check for f in self.failures if file is None or f.file == file}


def validation_params(params: dict[str, Any] | None) -> dict[str, Any]:
    """The ``validate`` section of the full params dict (typed and completed by :mod:`hardneg.settings`)."""
    from dataclasses import asdict

    from hardneg.settings import section

    if params is None:
        from hardneg.config import load_params

        params = load_params()
    return asdict(section(params, "validate"))


# --------------------------------------------------------------------------------------------------- loading


def _text_table(items: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """Stream ``(id, text)`` pairs into ``_id, record, text_chars, text_clean`` columns without keeping the texts.

    ``text_chars`` is the stripped length, NaN for an empty text (so ``not null`` = non-empty and the length
    bounds apply to non-empty texts only); ``record`` is the 1-based position in the file (blank lines skipped).
    """
    import numpy as np
    import pandas as pd

    ids: list[str] = []
    chars = array("d")
    clean = array("b")
    nan = math.nan
    for doc_id, text in items:
        ids.append(doc_id)
        n = len(text.strip())
        chars.append(float(n) if n else nan)
        clean.append(BAD_CHARS.search(text) is None)
    df = pd.DataFrame(
        {
            "_id": pd.Series(ids, dtype=object),
            "record": np.arange(1, len(ids) + 1, dtype=np.int64),
            "text_chars": np.frombuffer(chars, dtype=np.float64) if len(chars) else np.zeros(0),
            "text_clean": np.frombuffer(clean, dtype=np.int8).astype(bool)
            if len(clean)
            else np.zeros(0, bool),
        }
    )
    del ids, chars, clean
    return df


def _corpus_items(path: Path, stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    for d in iter_corpus(path, stats):
        yield d.id, d.full_text


def _query_items(path: Path, stats: ReadStats | None = None) -> Iterator[tuple[str, str]]:
    for q in iter_queries(path, stats):
        yield q.id, q.text


def _qrels_table(path: Path, stats: ReadStats | None = None) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    qs: list[str] = []
    ds: list[str] = []
    scores = array("q")
    for q, d, s in iter_qrels(path, stats):
        qs.append(q)
        ds.append(d)
        scores.append(s)
    return pd.DataFrame(
        {
            "query-id": pd.Series(qs, dtype=object),
            "corpus-id": pd.Series(ds, dtype=object),
            "score": np.frombuffer(scores, dtype=np.int64) if len(scores) else np.zeros(0, np.int64),
            "record": np.arange(1, len(qs) + 1, dtype=np.int64),
        }
    )


# ----------------------------------------------------------------------------------------------------- GX


def _gx():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    # GX logs hundreds of INFO lines at import/context creation (the CLI logs at INFO)
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe

    # this module sets its own logger to INFO when imported (one line per ephemeral context)
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)

    return gx, gxe


def _text_suite(gx, gxe, name: str, what: str, max_chars: int, p: dict[str, Any], empty_key: str):
    suite = gx.ExpectationSuite(name=name)
    # empty texts: validate.empty_documents / empty_queries "drop" = reported (mostly=0: never fails), "refuse" = fail
    empty_mostly = {"mostly": 0.0} if p[empty_key] == "drop" else {}
    for e in (
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "row_count"}),
        gxe.ExpectColumnValueLengthsToBeBetween(column="_id", min_value=1, meta={"check": "empty_id"}),
        gxe.ExpectColumnValuesToBeUnique(column="_id", meta={"check": "duplicate_id"}),
        gxe.ExpectColumnValuesToNotBeNull(
            column="text_chars", meta={"check": "empty_text", "what": what}, **empty_mostly
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="text_chars",
            min_value=p["min_text_chars"],
            max_value=max_chars,
            meta={"check": "text_length", "what": what},
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="text_clean",
            value_set=[True],
            mostly=max(0.0, min(1.0, 1.0 - float(p["max_bad_encoding_frac"]))),
            meta={"check": "encoding", "what": what},
        ),
    ):
        suite.add_expectation(e)
    return suite


def _qrels_suite(gx, gxe, p: dict[str, Any], have_queries: bool, have_corpus: bool):
    suite = gx.ExpectationSuite(name="qrels")
    exps = [
        gxe.ExpectTableRowCountToBeBetween(min_value=1, meta={"check": "row_count"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="score", min_value=p["score_min"], max_value=p["score_max"], meta={"check": "score_range"}
        ),
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=["query-id", "corpus-id"], meta={"check": "duplicate_pair"}
        ),
        gxe.ExpectColumnValuesToBeInSet(
            column="query_one_split", value_set=[True], meta={"check": "query_in_multiple_splits"}
        ),
    ]
    if have_queries:
        exps.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="query_known", value_set=[True], meta={"check": "unknown_query_id"}
            )
        )
    if have_corpus:
        exps.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="doc_known", value_set=[True], meta={"check": "unknown_doc_id"}
            )
        )
    for e in exps:
        suite.add_expectation(e)
    return suite


def _message(
    check: str, meta: dict, kind: str, p: dict[str, Any], max_chars: int | None, observed: dict[str, Any]
) -> str:
    """What failed and how to fix it (a params.yaml key or what to do to the file)."""
    what = meta.get("what", "text")
    file = {"corpus": "corpus.jsonl", "queries": "queries.jsonl"}.get(kind, "the qrels file")
    limit_key = "validate.max_text_chars" if kind == "corpus" else "validate.max_query_chars"
    if check == "row_count":
        return {
            "corpus": "no documents; fix: corpus.jsonl needs one JSON object per line",
            "queries": "no queries; fix: queries.jsonl needs one JSON object per line",
        }.get(
            kind,
            "no qrels rows; fix: add query-id<TAB>corpus-id<TAB>score rows, or delete the file (a missing dev "
            "split is carved from train: data.dev_fraction in params.yaml)",
        )
    if check == "empty_text":
        key = EMPTY_KEY.get(kind, "empty_documents")
        return (
            f"empty {what}; fix: set validate.{key}: drop in params.yaml to leave them out (with the qrels rows "
            f"pointing at them), or fill them in {file}"
        )
    if check == "score_range":
        lo, hi = observed.get("score_min"), observed.get("score_max")
        msg = f"score outside [{p['score_min']}, {p['score_max']}]"
        fixes = []
        if hi is not None and hi > p["score_max"]:
            msg += f": found {hi} (above validate.score_max {p['score_max']})"
            fixes.append(f"set validate.score_max: {hi} in params.yaml if the collection grades that high")
        if lo is not None and lo < p["score_min"]:
            msg += f"{', ' if fixes else ': '}found {lo} (below validate.score_min {p['score_min']})"
            fixes.append(
                f"set validate.score_min: {lo} in params.yaml to accept negative grades (scores < 1 are "
                "never positives)"
            )
        return (
            msg
            + "; fix: "
            + ("; or ".join(fixes) or "set validate.score_min / validate.score_max in params.yaml")
        )
    return {
        "empty_id": f"empty _id; fix: give every record in {file} a non-empty _id",
        "duplicate_id": f"duplicate _id; fix: keep one record per _id in {file} (ids must be unique)",
        "text_length": f"{what} length outside [{p['min_text_chars']}, {max_chars}] characters; fix: set "
        f"{limit_key} (or validate.min_text_chars) in params.yaml, or shorten the texts",
        "encoding": f"U+FFFD replacement or control characters in {what} (broken encoding?); fix: re-export "
        f"{file} as UTF-8 (e.g. `iconv -f cp1252 -t utf-8`), or raise validate.max_bad_encoding_frac in "
        "params.yaml to tolerate them",
        "duplicate_pair": "duplicate (query-id, corpus-id) row; fix: keep one row per pair "
        "(e.g. `awk -F'\\t' '!seen[$1 FS $2]++' FILE`)",
        "query_in_multiple_splits": "query-id also appears in another split (train/eval leakage); fix: keep each "
        "query's rows in one qrels file",
        "unknown_query_id": "query-id not in queries.jsonl; fix: add the query to queries.jsonl or remove its rows",
        "unknown_doc_id": "corpus-id not in corpus.jsonl; fix: add the document to corpus.jsonl or remove the rows",
    }.get(check, check)


def _example(check: str, row: dict, other_splits: dict[str, list[str]]) -> str:
    if "_id" in row:
        doc_id = row.get("_id")
        return str(doc_id) if doc_id else f"<empty id> (record {int(row['record'])})"
    q, d = row.get("query-id"), row.get("corpus-id")
    if check == "unknown_doc_id":
        return str(d)
    if check == "unknown_query_id":
        return str(q)
    if check == "query_in_multiple_splits":
        return f"{q} (also in {', '.join(other_splits.get(str(q), []))})"
    if check == "score_range":
        return f"{q} -> {d} (score {row.get('score')})"
    return f"{q} -> {d}"


def _collect(
    result,
    file: str,
    kind: str,
    p,
    max_chars,
    other_splits,
    report: ValidationReport,
    observed: dict[str, Any] | None = None,
) -> None:
    """Turn one GX suite result into Failure rows (errors and below-`mostly` warnings)."""
    for er in result.results:
        cfg = er.expectation_config
        meta = dict(cfg.meta or {})
        check = meta.get("check", cfg.type)
        res = er.result or {}
        exc = er.exception_info or {}
        if exc.get("raised_exception"):
            report.failures.append(
                Failure(
                    file, check, 0, [], f"GX could not evaluate {cfg.type}: {exc.get('exception_message')}"
                )
            )
            continue
        count = int(res.get("unexpected_count") or 0)
        if check == "row_count":
            count = 0 if er.success else 1
        if er.success and count == 0:
            continue
        examples: list[str] = []
        for row in res.get("partial_unexpected_index_list") or []:
            ex = _example(check, row, other_splits)
            if ex not in examples:
                examples.append(ex)
            if len(examples) >= MAX_EXAMPLES:
                break
        if er.success:
            report.warnings.append(
                Failure(
                    file, check, count, examples, _warning(check, meta, kind, p, count), severity="warning"
                )
            )
            continue
        msg = _message(check, meta, kind, p, max_chars, observed or {})
        if check == "row_count":
            msg = msg.replace(";", f" (observed {res.get('observed_value')});", 1)
        report.failures.append(Failure(file, check, count, examples, msg))


def _warning(check: str, meta: dict, kind: str, p: dict[str, Any], count: int) -> str:
    """Message of a check that passed under its ``mostly`` threshold but still found rows."""
    what = meta.get("what", "text")
    if check == "empty_text":
        key = EMPTY_KEY.get(kind, "empty_documents")
        noun = "document(s) (empty title and text)" if kind == "corpus" else "quer(y/ies) (empty text)"
        return (
            f"{count} empty {noun}: left out by hardneg with the qrels rows pointing at them "
            f"(validate.{key}: drop); set validate.{key}: refuse in params.yaml to fail instead"
        )
    if check == "encoding":
        return (
            f"U+FFFD replacement or control characters in {what} (broken encoding?) "
            f"(tolerated: <= {p['max_bad_encoding_frac']:g} of rows, validate.max_bad_encoding_frac)"
        )
    return f"{check}: {count} row(s) (tolerated)"


class _GxRunner:
    """One ephemeral GX context; each table is validated through a checkpoint (Data Docs optional)."""

    def __init__(self, data_docs_dir: str | os.PathLike | None):
        self.gx, self.gxe = _gx()
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.ctx = self.gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        self.src = self.ctx.data_sources.add_pandas("beir")
        self.site: str | None = None
        if data_docs_dir is not None:
            base = Path(data_docs_dir).resolve()
            base.mkdir(parents=True, exist_ok=True)
            self.site = "hardneg_site"  # an ephemeral context already has `local_site`
            self.ctx.add_data_docs_site(
                site_name=self.site,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(base),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                },
            )

    def add_suite(self, suite):
        return self.ctx.suites.add(suite)

    def run(self, table: str, suite, df, index_cols: list[str]):
        gx = self.gx
        bd = self.src.add_dataframe_asset(table).add_batch_definition_whole_dataframe("all")
        vd = self.ctx.validation_definitions.add(
            gx.ValidationDefinition(name=f"{table}_vd", data=bd, suite=suite)
        )
        cp = self.ctx.checkpoints.add(
            gx.Checkpoint(
                name=f"{table}_checkpoint",
                validation_definitions=[vd],
                result_format={
                    "result_format": "SUMMARY",
                    "unexpected_index_column_names": index_cols,
                    "partial_unexpected_count": 20,
                },
                actions=[],
            )
        )
        cr = cp.run(batch_parameters={"dataframe": df})
        return next(iter(cr.run_results.values()))

    def build_docs(self) -> str | None:
        if self.site is None:
            return None
        return self.ctx.build_data_docs(site_names=[self.site]).get(self.site)


# ---------------------------------------------------------------------------------------------------- main


# how to fix each reader error (DataFormatError.detail prefix -> hint); the readers' own messages stay terse
_FORMAT_HINTS: tuple[tuple[str, str], ...] = (
    ("file not found", "the folder needs corpus.jsonl, queries.jsonl and qrels/<split>.tsv (BEIR layout)"),
    ("file is empty", "re-export the file (DVC-tracked data: `dvc pull` or `dvc checkout`)"),
    ("not valid UTF-8", "re-encode the file as UTF-8 (e.g. `iconv -f cp1252 -t utf-8 IN > OUT`)"),
    ("starts with a UTF-8 byte-order mark", "remove the BOM (e.g. `sed -i '1s/^\\xEF\\xBB\\xBF//' FILE`)"),
    (
        "header must be",
        "the first line must be query-id<TAB>corpus-id<TAB>score (e.g. `sed -i 's/,/\\t/g' FILE` "
        "for a comma-separated file)",
    ),
    ("expected 3 TAB-separated", "each row is query-id<TAB>corpus-id<TAB>score: fix or remove that line"),
    ("score must be an integer", "qrels scores are integer grades (0 = not relevant): round or map them"),
    (
        "no qrels/*.tsv",
        "add qrels/train.tsv and qrels/test.tsv (query-id<TAB>corpus-id<TAB>score); a missing "
        "dev split is carved from train (data.dev_fraction in params.yaml)",
    ),
    ("dataset folder not found", "pass the BEIR folder as the argument or set data.dir in params.yaml"),
)
_JSONL_HINT = 'each line must be one JSON object with string "_id" and "text": fix or remove that line'


def _format_hint(detail: str) -> str:
    for prefix, hint in _FORMAT_HINTS:
        if prefix in detail:
            return hint
    return _JSONL_HINT


def _with_hint(detail: str) -> str:
    return f"{detail}; fix: {_format_hint(detail)}"


def _format_failure(e: DataFormatError, root: Path) -> Failure:
    return Failure(
        file=_rel(e.path, root),
        check="format",
        count=1,
        examples=[f"line {e.line}"] if e.line is not None else [],
        message=_with_hint(e.detail),
        line=e.line,
    )


def _crlf_warning(file: str, stats: ReadStats) -> Failure:
    return Failure(
        file,
        "line_endings",
        stats.crlf_lines,
        [f"line {stats.first_crlf_line}"],
        f"Windows (CRLF) line endings on {stats.crlf_lines} of {stats.lines} lines: read as LF, nothing to do "
        "(`dos2unix FILE` converts the file)",
        severity="warning",
    )


def _rel(path: str | os.PathLike, root: Path) -> str:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return str(p)


def _text_stats(df) -> dict[str, Any]:
    n = df["text_chars"].dropna()
    return {
        "count": int(len(df)),
        "empty": int(len(df) - len(n)),
        "unique_ids": int(df["_id"].nunique()),
        "chars_mean": round(float(n.mean()), 1) if len(n) else 0.0,
        "chars_max": int(n.max()) if len(n) else 0,
    }


def validate_dataset(
    root: str | os.PathLike,
    params: dict[str, Any] | None = None,
    data_docs_dir: str | os.PathLike | None = None,
) -> ValidationReport:
    """Validate a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``); never raises for bad data.

    ``params``: the full params dict (its ``validate`` section is used, and ``data`` for the split names) or
    ``None`` for ``load_params()``.
    ``data_docs_dir``: also build GX Data Docs there (static HTML; it loads CSS/JS from CDNs, so offline it renders
    unstyled).
    """
    if params is None:
        from hardneg.config import load_params

        params = load_params()
    p = validation_params(params)
    from dataclasses import asdict

    from hardneg.settings import section

    data_p = asdict(section(params, "data"))
    r = Path(root)
    report = ValidationReport(root=str(r), success=False)
    if not r.is_dir():
        report.failures.append(
            Failure(
                str(r),
                "format",
                1,
                [],
                _with_hint("dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/)"),
            )
        )
        return report

    runner = _GxRunner(data_docs_dir)
    tables = _validate_texts(r, runner, p, report)
    qrels = _read_qrels(r, data_p, report)
    _validate_qrels(qrels, tables, runner, p, report)
    try:
        report.data_docs = runner.build_docs()
    except Exception as e:  # Data Docs are a by-product: never let them hide the validation result
        log.warning("could not build GX Data Docs in %s: %s", data_docs_dir, e)
    report.success = not report.failures
    return report


def _validate_texts(
    r: Path, runner: _GxRunner, p: dict[str, Any], report: ValidationReport
) -> dict[str, pd.DataFrame | None]:
    """corpus.jsonl and queries.jsonl: format, GX text checks, stats; the tables (None: unreadable)."""
    gx, gxe = runner.gx, runner.gxe
    tables: dict[str, pd.DataFrame | None] = {}
    stats_of = {"corpus": ReadStats(), "queries": ReadStats()}
    for name, items, what, max_chars in (
        ("corpus", _corpus_items(r / "corpus.jsonl", stats_of["corpus"]), "title+text", p["max_text_chars"]),
        ("queries", _query_items(r / "queries.jsonl", stats_of["queries"]), "text", p["max_query_chars"]),
    ):
        file = f"{name}.jsonl"
        try:
            df = _text_table(items)
        except DataFormatError as e:
            report.failures.append(_format_failure(e, r))
            tables[name] = None
            continue
        finally:
            if stats_of[name].crlf_lines:
                report.warnings.append(_crlf_warning(file, stats_of[name]))
        tables[name] = df
        report.stats["docs" if name == "corpus" else "queries"] = _text_stats(df)
        suite = runner.add_suite(_text_suite(gx, gxe, f"{name}_suite", what, max_chars, p, EMPTY_KEY[name]))
        res = runner.run(name, suite, df, ["record", "_id"])
        report.gx[file] = _gx_summary(res)
        _collect(res, file, name, p, max_chars, {}, report)
        if len(df) and p[EMPTY_KEY[name]] == "drop" and df["text_chars"].isna().all():
            report.failures.append(
                Failure(
                    file,
                    "all_empty",
                    int(len(df)),
                    [str(x) for x in df["_id"].head(MAX_EXAMPLES)],
                    f"every record of {file} has an empty text: nothing would be left after dropping them; fix: "
                    f"re-export {file} with its texts",
                )
            )

    return tables


def _read_qrels(r: Path, data_p: dict[str, Any], report: ValidationReport) -> dict[str, pd.DataFrame]:
    """Every qrels/*.tsv (format failures and CRLF warnings recorded), and what the split layout means."""
    splits = available_splits(r)
    qrels: dict[str, pd.DataFrame] = {}
    if not splits:
        report.failures.append(Failure("qrels", "format", 1, [], _with_hint("no qrels/*.tsv files found")))
    for split in splits:
        file = f"qrels/{split}.tsv"
        st = ReadStats()
        try:
            qrels[split] = _qrels_table(r / "qrels" / f"{split}.tsv", st)
        except DataFormatError as e:
            report.failures.append(_format_failure(e, r))
        if st.crlf_lines:
            report.warnings.append(_crlf_warning(file, st))
    if splits:
        _split_warnings(splits, data_p, report)

    return qrels


def _validate_qrels(
    qrels: dict[str, pd.DataFrame],
    tables: dict[str, pd.DataFrame | None],
    runner: _GxRunner,
    p: dict[str, Any],
    report: ValidationReport,
) -> None:
    """GX checks of every qrels split against the corpus and queries (cross-file boolean columns), stats, and a
    warning for rows that point at a dropped empty document / query."""
    gx, gxe = runner.gx, runner.gxe
    # cross-file boolean columns (never ExpectColumnValuesToBeInSet with the id set itself: docs/stack.md section 4)
    splits_of: dict[str, list[str]] = {}
    for split, df in qrels.items():
        for q in df["query-id"].unique():
            splits_of.setdefault(str(q), []).append(split)
    multi = {q: s for q, s in splits_of.items() if len(s) > 1}
    corpus_df, queries_df = tables.get("corpus"), tables.get("queries")
    suite = runner.add_suite(_qrels_suite(gx, gxe, p, queries_df is not None, corpus_df is not None))
    report.stats["qrels"] = {}
    dropped_docs = _empty_ids(corpus_df) if p["empty_documents"] == "drop" else set()
    dropped_queries = _empty_ids(queries_df) if p["empty_queries"] == "drop" else set()
    for split, df in qrels.items():
        file = f"qrels/{split}.tsv"
        df["query_one_split"] = ~df["query-id"].isin(list(multi))
        if queries_df is not None:
            df["query_known"] = df["query-id"].isin(queries_df["_id"])
        if corpus_df is not None:
            df["doc_known"] = df["corpus-id"].isin(corpus_df["_id"])
        report.stats["qrels"][split] = {
            "rows": int(len(df)),
            "queries": int(df["query-id"].nunique()),
            "docs": int(df["corpus-id"].nunique()),
        }
        res = runner.run(f"qrels_{split}", suite, df, ["record", "query-id", "corpus-id"])
        report.gx[file] = _gx_summary(res)
        others = {q: [s for s in multi[q] if s != split] for q in multi}
        observed = (
            {"score_min": int(df["score"].min()), "score_max": int(df["score"].max())} if len(df) else {}
        )
        _collect(res, file, "qrels", p, None, others, report, observed)
        if dropped_docs or dropped_queries:
            gone = df["corpus-id"].isin(dropped_docs) | df["query-id"].isin(dropped_queries)
            if gone.any():
                rows = df[gone].head(MAX_EXAMPLES)
                report.warnings.append(
                    Failure(
                        file,
                        "qrels_to_dropped",
                        int(gone.sum()),
                        [f"{q} -> {d}" for q, d in zip(rows["query-id"], rows["corpus-id"], strict=True)],
                        "qrels rows pointing at an empty document / query: left out with it "
                        "(validate.empty_documents / validate.empty_queries: drop)",
                        severity="warning",
                    )
                )


def _empty_ids(df) -> set[str]:
    if df is None:
        return set()
    return set(df.loc[df["text_chars"].isna(), "_id"].astype(str))


def _split_warnings(splits: list[str], data_p: dict[str, Any], report: ValidationReport) -> None:
    """A folder without a dev split is accepted (public BEIR sets ship train + test): say what the pipeline does."""
    dev, train = data_p["dev_split"], data_p["train_split"]
    if dev in splits:
        return
    if train in splits:
        msg = (
            f"no qrels/{dev}.tsv: the pipeline carves a {dev} split from {train} in memory "
            f"(data.dev_fraction {data_p.get('dev_fraction', 0.1)}, data.dev_seed {data_p.get('dev_seed', 13)}, "
            f"data.dev_max_queries {data_p.get('dev_max_queries', 500)}); add qrels/{dev}.tsv to choose it yourself"
        )
    else:
        msg = (
            f"no qrels/{dev}.tsv and no qrels/{train}.tsv: evaluation only; training needs qrels/{train}.tsv "
            "(data.train_split in params.yaml)"
        )
    report.warnings.append(Failure("qrels", "no_dev_split", 0, [], msg, severity="warning"))


def _gx_summary(res) -> dict[str, Any]:
    st = res.statistics or {}
    return {
        "success": bool(res.success),
        "evaluated": int(st.get("evaluated_expectations", 0)),
        "successful": int(st.get("successful_expectations", 0)),
    }
