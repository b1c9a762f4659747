"""hardneg.validate: the clean fixture passes; each corruption of a copy fails with the expected check, file (and
line for format errors); the input folder is never modified; the CLI prints the table and sets the exit code."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hardneg.config import default_params
from hardneg.lineage import sha256_dir
from hardneg.validate import ValidationReport, validate_dataset

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def params() -> dict:
    return default_params()


# ---------------------------------------------------------------------------------------------- helpers


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


def _edit_jsonl(path: Path, lineno: int, **changes) -> dict:
    """Set fields of the JSON object on 1-based line ``lineno`` (a value of ``...`` deletes the field)."""
    lines = _lines(path)
    obj = json.loads(lines[lineno - 1])
    for k, v in changes.items():
        if v is ...:
            obj.pop(k)
        else:
            obj[k] = v
    lines[lineno - 1] = json.dumps(obj, ensure_ascii=False)
    _write_lines(path, lines)
    return obj


def _qrels_rows(root: Path, split: str) -> list[list[str]]:
    return [line.split("\t") for line in _lines(root / "qrels" / f"{split}.tsv")[1:]]


def _write_qrels(root: Path, split: str, rows: list[list[str]]) -> None:
    _write_lines(
        root / "qrels" / f"{split}.tsv", ["query-id\tcorpus-id\tscore"] + ["\t".join(r) for r in rows]
    )


def _referenced_docs(root: Path) -> set[str]:
    return {r[1] for s in ("train", "dev", "test") for r in _qrels_rows(root, s)}


def _unreferenced_doc_line(root: Path) -> tuple[int, str]:
    """(line, id) of a corpus document no qrels row points at, so corrupting it triggers only one check."""
    used = _referenced_docs(root)
    for i, line in enumerate(_lines(root / "corpus.jsonl"), start=1):
        doc_id = json.loads(line)["_id"]
        if doc_id not in used:
            return i, doc_id
    raise AssertionError("fixture has no unreferenced document")


# ------------------------------------------------------------------------------------------- corruptions
# each returns the example id the failure must list (or {file: example}, or None); expected (file, check) pairs
# are exact.


def dup_doc_id(root: Path):
    line, _ = _unreferenced_doc_line(root)
    first_id = json.loads(_lines(root / "corpus.jsonl")[0])["_id"]
    _edit_jsonl(root / "corpus.jsonl", line, _id=first_id)
    return first_id


def empty_doc_id(root: Path):
    line, _ = _unreferenced_doc_line(root)
    _edit_jsonl(root / "corpus.jsonl", line, _id="")
    return f"<empty id> (record {line})"


def empty_doc_text(root: Path):
    line, doc_id = _unreferenced_doc_line(root)
    _edit_jsonl(root / "corpus.jsonl", line, title="", text="   ")
    return doc_id


def dup_query_id(root: Path):
    lines = _lines(root / "queries.jsonl")
    obj = json.loads(lines[0])
    obj["text"] = "another claim with the same id"
    _write_lines(root / "queries.jsonl", lines + [json.dumps(obj)])
    return obj["_id"]


def qrels_unknown_doc(root: Path):
    rows = _qrels_rows(root, "train")
    rows[3][1] = "no-such-doc"
    _write_qrels(root, "train", rows)
    return "no-such-doc"


def qrels_unknown_query(root: Path):
    rows = _qrels_rows(root, "dev")
    rows.append(["no-such-query", rows[0][1], "1"])
    _write_qrels(root, "dev", rows)
    return "no-such-query"


def score_out_of_range(root: Path):
    rows = _qrels_rows(root, "test")
    rows[0][2] = "7"
    _write_qrels(root, "test", rows)
    return f"{rows[0][0]} -> {rows[0][1]} (score 7)"


def query_in_two_splits(root: Path):
    train, test = _qrels_rows(root, "train"), _qrels_rows(root, "test")
    test.append([train[0][0], test[0][1], "1"])
    _write_qrels(root, "test", test)
    q = train[0][0]
    return {"qrels/test.tsv": f"{q} (also in train)", "qrels/train.tsv": f"{q} (also in test)"}


def dup_qrels_row(root: Path):
    rows = _qrels_rows(root, "train")
    rows.insert(5, list(rows[2]))
    _write_qrels(root, "train", rows)
    return f"{rows[2][0]} -> {rows[2][1]}"


def long_doc_text(root: Path):
    line, doc_id = _unreferenced_doc_line(root)
    _edit_jsonl(root / "corpus.jsonl", line, title="", text="x" * 100_001)  # params: max_text_chars 100000
    return doc_id


def long_query(root: Path):
    obj = _edit_jsonl(root / "queries.jsonl", 4, text="why " * 600)  # 2399 chars > max_query_chars 2000
    return obj["_id"]


def replacement_char(root: Path):
    line, doc_id = _unreferenced_doc_line(root)
    _edit_jsonl(root / "corpus.jsonl", line, text="cells \ufffd divide")
    return doc_id


def control_char_query(root: Path):
    obj = _edit_jsonl(
        root / "queries.jsonl", 2, text="mojibake \x96 dash"
    )  # a cp1252 byte decoded as latin-1
    return obj["_id"]


def empty_split(root: Path):
    _write_qrels(root, "dev", [])
    return None


def qrels_bad_score_type(root: Path):
    rows = _qrels_rows(root, "train")
    rows[6][2] = "1.5"
    _write_qrels(root, "train", rows)
    return None  # line 8: header + 7th row


def bad_json_line(root: Path):
    lines = _lines(root / "corpus.jsonl")
    lines[4] = lines[4][:-10]  # truncated object on line 5
    _write_lines(root / "corpus.jsonl", lines)


def missing_id_field(root: Path):
    _edit_jsonl(root / "queries.jsonl", 3, _id=...)


def empty_corpus_file(root: Path):
    (root / "corpus.jsonl").write_bytes(b"")


def qrels_commas(root: Path):
    p = root / "qrels" / "dev.tsv"
    p.write_text(p.read_text(encoding="utf-8").replace("\t", ","), encoding="utf-8")


def bom_queries(root: Path):
    p = root / "queries.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + p.read_bytes())


def crlf_corpus(root: Path):
    p = root / "corpus.jsonl"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))


def crlf_qrels(root: Path):
    p = root / "qrels" / "train.tsv"
    p.write_bytes(p.read_bytes().replace(b"\n", b"\r\n"))


def non_utf8_corpus(root: Path):
    p = root / "corpus.jsonl"
    lines = p.read_bytes().split(b"\n")
    lines[40] = lines[40].replace(b'"text": "', b'"text": "\xff\xfe', 1)  # line 41, > 8 KiB into the file
    p.write_bytes(b"\n".join(lines))


def no_qrels(root: Path):
    for f in (root / "qrels").iterdir():
        f.unlink()


CONTENT_CASES: list[tuple[str, Callable, set[tuple[str, str]], str]] = [
    # (id, corrupt, exact failing (file, check) pairs, message fragment)
    ("duplicate-doc-id", dup_doc_id, {("corpus.jsonl", "duplicate_id")}, "duplicate _id"),
    ("empty-doc-id", empty_doc_id, {("corpus.jsonl", "empty_id")}, "empty _id"),
    ("duplicate-query-id", dup_query_id, {("queries.jsonl", "duplicate_id")}, "duplicate _id"),
    ("qrels-unknown-doc", qrels_unknown_doc, {("qrels/train.tsv", "unknown_doc_id")}, "not in corpus.jsonl"),
    (
        "qrels-unknown-query",
        qrels_unknown_query,
        {("qrels/dev.tsv", "unknown_query_id")},
        "not in queries.jsonl",
    ),
    (
        "score-out-of-range",
        score_out_of_range,
        {("qrels/test.tsv", "score_range")},
        "score outside [0, 4]: found 7 (above validate.score_max 4); fix: set validate.score_max: 7 in params.yaml",
    ),
    (
        "query-in-two-splits",
        query_in_two_splits,
        {("qrels/test.tsv", "query_in_multiple_splits"), ("qrels/train.tsv", "query_in_multiple_splits")},
        "another split",
    ),
    (
        "duplicate-qrels-row",
        dup_qrels_row,
        {("qrels/train.tsv", "duplicate_pair")},
        "duplicate (query-id, corpus-id)",
    ),
    ("over-long-doc", long_doc_text, {("corpus.jsonl", "text_length")}, "outside [1, 100000]"),
    ("over-long-query", long_query, {("queries.jsonl", "text_length")}, "outside [1, 2000]"),
    ("replacement-char", replacement_char, {("corpus.jsonl", "encoding")}, "U+FFFD"),
    ("control-char", control_char_query, {("queries.jsonl", "encoding")}, "control characters"),
    ("empty-split", empty_split, {("qrels/dev.tsv", "row_count")}, "no qrels rows"),
]

FORMAT_CASES: list[tuple[str, Callable, str, int | None, str]] = [
    # (id, corrupt, file, line, message fragment)
    ("non-integer-score", qrels_bad_score_type, "qrels/train.tsv", 8, "score must be an integer, got '1.5'"),
    ("bad-json-line", bad_json_line, "corpus.jsonl", 5, "invalid JSON"),
    ("missing-id-field", missing_id_field, "queries.jsonl", 3, "missing field(s) ['_id']"),
    ("empty-corpus-file", empty_corpus_file, "corpus.jsonl", None, "file is empty"),
    ("qrels-comma-delimited", qrels_commas, "qrels/dev.tsv", 1, "not TAB-separated"),
    ("bom", bom_queries, "queries.jsonl", 1, "byte-order mark"),
    ("non-utf8-bytes", non_utf8_corpus, "corpus.jsonl", 41, "not valid UTF-8"),
    ("no-qrels-files", no_qrels, "qrels", None, "no qrels/*.tsv"),
]


# ------------------------------------------------------------------------------------------------ tests


def test_clean_fixture_passes(tiny_data_dir, params):
    report = validate_dataset(tiny_data_dir, params)
    assert report.success, report.failures
    assert report.failures == [] and report.warnings == []
    assert report.stats["docs"]["count"] == 107 and report.stats["queries"]["count"] == 40
    assert {s: v["rows"] for s, v in report.stats["qrels"].items()} == {"train": 26, "dev": 10, "test": 12}
    # every table went through GX and every expectation was evaluated
    assert set(report.gx) == {
        "corpus.jsonl",
        "queries.jsonl",
        "qrels/train.tsv",
        "qrels/dev.tsv",
        "qrels/test.tsv",
    }
    assert all(g["success"] and g["evaluated"] == g["successful"] >= 6 for g in report.gx.values())
    json.dumps(report.to_dict())  # JSON-serialisable (no numpy scalars)


@pytest.mark.parametrize(
    ("corrupt", "expected", "fragment"), [c[1:] for c in CONTENT_CASES], ids=[c[0] for c in CONTENT_CASES]
)
def test_content_corruption_fails(tiny_data_copy, params, corrupt, expected, fragment):
    example = corrupt(tiny_data_copy)
    report = validate_dataset(tiny_data_copy, params)
    assert not report.success
    assert {(f.file, f.check) for f in report.failures} == expected, report.failures
    for f in report.failures:
        assert f.severity == "error" and f.count >= 1
        assert fragment in f.message
        assert "; fix: " in f.message  # every failure says how to fix it
        want = example.get(f.file) if isinstance(example, dict) else example
        if want is not None:
            assert want in f.examples, f.examples


@pytest.mark.parametrize(
    ("corrupt", "file", "line", "fragment"), [c[1:] for c in FORMAT_CASES], ids=[c[0] for c in FORMAT_CASES]
)
def test_malformed_file_is_a_failure_not_a_traceback(tiny_data_copy, params, corrupt, file, line, fragment):
    corrupt(tiny_data_copy)
    report = validate_dataset(tiny_data_copy, params)
    assert not report.success
    fmt = [f for f in report.failures if f.check == "format"]
    assert len(fmt) == 1, report.failures
    f = fmt[0]
    assert (f.file, f.line) == (file, line)
    assert fragment in f.message
    assert "; fix: " in f.message and len(f.message.split("; fix: ")[1]) > 20
    if line is not None:
        assert f.examples == [f"line {line}"]
    # the other files are still validated, and nothing else is reported as failing
    assert [x for x in report.failures if x.check != "format"] == []
    assert file not in report.gx and len(report.gx) >= 2


def test_duplicate_doc_reports_count_and_ids(tiny_data_copy, params):
    lines = _lines(tiny_data_copy / "corpus.jsonl")
    used = _referenced_docs(tiny_data_copy)
    free = [i for i, ln in enumerate(lines) if json.loads(ln)["_id"] not in used][:3]
    for i in free:  # three documents all re-using the first document's id
        obj = json.loads(lines[i])
        obj["_id"] = json.loads(lines[0])["_id"]
        lines[i] = json.dumps(obj)
    _write_lines(tiny_data_copy / "corpus.jsonl", lines)
    (f,) = validate_dataset(tiny_data_copy, params).failures
    assert (f.check, f.count, f.examples) == ("duplicate_id", 4, [json.loads(lines[0])["_id"]])


@pytest.mark.parametrize("corrupt", [crlf_corpus, crlf_qrels], ids=["crlf-jsonl", "crlf-qrels"])
def test_crlf_is_a_warning_not_a_failure(tiny_data_copy, params, corrupt):
    corrupt(tiny_data_copy)
    report = validate_dataset(tiny_data_copy, params)
    assert report.success and report.failures == [], report.failures
    (w,) = report.warnings
    file = "corpus.jsonl" if corrupt is crlf_corpus else "qrels/train.tsv"
    lines = 107 if corrupt is crlf_corpus else 27
    assert (w.file, w.check, w.count, w.severity, w.examples) == (
        file,
        "line_endings",
        lines,
        "warning",
        ["line 1"],
    )
    assert "CRLF" in w.message and "dos2unix" in w.message
    # the content was read exactly as from the LF file
    assert report.stats == validate_dataset(REPO / "tests" / "fixtures" / "tiny", params).stats


def test_empty_document_dropped_with_warning_or_refused(tiny_data_copy, params):
    doc_id = empty_doc_text(tiny_data_copy)
    report = validate_dataset(tiny_data_copy, params)  # default validate.empty_documents: drop
    assert report.success and report.failures == [], report.failures
    (w,) = report.warnings
    assert (w.file, w.check, w.count, w.examples, w.severity) == (
        "corpus.jsonl",
        "empty_text",
        1,
        [doc_id],
        "warning",
    )
    assert "validate.empty_documents" in w.message and "refuse" in w.message
    assert report.gx["corpus.jsonl"]["success"] and report.stats["docs"]["empty"] == 1

    refuse = {**params, "validate": {**params["validate"], "empty_documents": "refuse"}}
    report = validate_dataset(tiny_data_copy, refuse)
    assert not report.success
    (f,) = report.failures
    assert (f.file, f.check, f.count, f.examples) == ("corpus.jsonl", "empty_text", 1, [doc_id])
    assert "validate.empty_documents: drop" in f.message and "; fix: " in f.message


def test_no_dev_split_is_accepted_with_a_warning(tiny_data_copy, params):
    (tiny_data_copy / "qrels" / "dev.tsv").unlink()
    report = validate_dataset(tiny_data_copy, params)
    assert report.success and report.failures == [], report.failures
    (w,) = report.warnings
    assert (w.file, w.check, w.severity) == ("qrels", "no_dev_split", "warning")
    assert "data.dev_fraction" in w.message and "carves" in w.message
    assert set(report.stats["qrels"]) == {"train", "test"}


def test_encoding_below_threshold_is_a_warning(tiny_data_copy, params):
    replacement_char(tiny_data_copy)
    lenient = {**params, "validate": {**params["validate"], "max_bad_encoding_frac": 0.05}}
    report = validate_dataset(tiny_data_copy, lenient)
    assert report.success and report.failures == []
    (w,) = report.warnings
    assert (w.file, w.check, w.count, w.severity) == ("corpus.jsonl", "encoding", 1, "warning")


def test_params_bounds_are_used(tiny_data_dir, params):
    strict = {**params, "validate": {**params["validate"], "max_text_chars": 700, "score_min": 2}}
    report = validate_dataset(tiny_data_dir, strict)
    assert ("corpus.jsonl", "text_length") in {(f.file, f.check) for f in report.failures}
    assert {f.file for f in report.failures if f.check == "score_range"} == {
        "qrels/train.tsv",
        "qrels/dev.tsv",
        "qrels/test.tsv",
    }


def test_validation_does_not_modify_input(tiny_data_copy, params, tmp_path):
    non_utf8_corpus(tiny_data_copy)  # a broken file too: the reader must not "repair" it
    dup_qrels_row(tiny_data_copy)

    def snapshot():
        files = sorted(p for p in tiny_data_copy.rglob("*"))
        return sha256_dir(tiny_data_copy), [
            (p.relative_to(tiny_data_copy), p.stat().st_mtime_ns) for p in files
        ]

    before = snapshot()
    report = validate_dataset(tiny_data_copy, params, data_docs_dir=tmp_path / "docs")
    assert not report.success
    assert snapshot() == before


def test_data_docs_are_built(tiny_data_dir, params, tmp_path):
    docs = tmp_path / "gx_docs"
    report = validate_dataset(tiny_data_dir, params, data_docs_dir=docs)
    assert report.success
    assert report.data_docs == (docs / "index.html").resolve().as_uri()
    pages = {p.name for p in docs.rglob("*.html")}
    assert {"index.html", "corpus_suite.html", "beir-corpus.html", "beir-qrels_train.html"} <= pages


def test_missing_folder_is_a_failure(tmp_path, params):
    report = validate_dataset(tmp_path / "nope", params)
    assert not report.success
    assert [(f.check, f.message) for f in report.failures] == [
        (
            "format",
            "dataset folder not found (expected corpus.jsonl, queries.jsonl, qrels/); "
            "fix: pass the BEIR folder as the argument or set data.dir in params.yaml",
        )
    ]


def test_report_to_dict_round_trips_through_json(tiny_data_copy, params):
    dup_doc_id(tiny_data_copy)
    report = validate_dataset(tiny_data_copy, params)
    d = json.loads(json.dumps(report.to_dict()))
    assert d["success"] is False
    assert d["failures"][0]["file"] == "corpus.jsonl" and d["failures"][0]["check"] == "duplicate_id"
    assert d["stats"]["docs"]["unique_ids"] == 106
    assert isinstance(report, ValidationReport)


# --------------------------------------------------------------------------------------------------- CLI


def _cli(args: list[str]):
    from hardneg.cli import app

    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def test_cli_fails_with_table_and_exit_1(tiny_data_copy, tmp_path):
    qrels_unknown_doc(tiny_data_copy)
    out = tmp_path / "report" / "validation.json"
    res = _cli(["validate", str(tiny_data_copy), "--json-out", str(out)])
    assert res.exit_code == 1, res.output
    assert "qrels/train.tsv" in res.output and "unknown_doc_id" in res.output and "no-such-doc" in res.output
    assert "1 check(s) failed" in res.output
    assert "Traceback" not in res.output
    data = json.loads(out.read_text())
    assert data["success"] is False and data["failures"][0]["examples"] == ["no-such-doc"]


def test_cli_format_error_exit_1(tiny_data_copy):
    bad_json_line(tiny_data_copy)
    res = _cli(["validate", str(tiny_data_copy)])
    assert res.exit_code == 1
    assert "corpus.jsonl" in res.output and "invalid JSON" in res.output and "line 5" in res.output


def test_cli_clean_fixture_exit_0(tiny_data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: packaged defaults
    res = _cli(["validate", str(tiny_data_dir)])
    assert res.exit_code == 0, res.output
    assert "passed validation" in res.output and "107 docs" in res.output and "40 queries" in res.output
    assert not (tmp_path / "validation.json").exists()  # JSON only with --json-out


# ---------------------------------------------------------------------------------------------- real data


def test_shipped_scifact_passes(params):
    root = REPO / "data" / "scifact"
    if not (root / "corpus.jsonl").exists():
        pytest.skip("data/scifact is absent (DVC-tracked: run `dvc pull` or `dvc checkout` to get it)")
    report = validate_dataset(root, params)
    assert report.success, report.failures
    assert report.stats["docs"]["count"] == 5183 and report.stats["queries"]["count"] == 1109
    assert {s: v["rows"] for s, v in report.stats["qrels"].items()} == {"train": 829, "dev": 90, "test": 339}
    # BEIR's SciFact (byte-identical upstream copy) has 8 abstracts with U+FFFD / C1 control characters: tolerated
    assert [(w.check, w.count) for w in report.warnings] == [("encoding", 8)]
