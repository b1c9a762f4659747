"""hardneg.data: BEIR round trips, streaming, split/positive helpers, and DataFormatError naming file and line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hardneg.data import (
    BeirDataset,
    Document,
    Query,
    available_splits,
    iter_corpus,
    iter_qrels,
    iter_queries,
    load_corpus,
    load_dataset,
    load_qrels,
    load_queries,
    save_corpus,
    save_dataset,
    save_qrels,
    save_queries,
)
from hardneg.errors import DataFormatError, HardnegError

pytestmark = pytest.mark.unit

DOCS = [
    Document(id="d1", title="Cell cycle", text="Clocks and cell division.", metadata={"year": 2001}),
    Document(id="d2", text="No title, unicode: naïve café – 5 µm, 日本語"),
    Document(id="42", title='Tabs\tand "quotes"', text="line\nbreak inside a JSON string"),
]
QUERIES = [
    Query(id="q1", text="Do clocks gate mitosis?"),
    Query(id="q2", text="µ-opioid", metadata={"src": "x"}),
]


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return path


def _error(fn, *args) -> DataFormatError:
    with pytest.raises(DataFormatError) as ei:
        fn(*args)
    assert isinstance(ei.value, HardnegError)
    return ei.value


# ---------------------------------------------------------------------------------------------- round trips


def test_corpus_round_trip(tmp_path):
    p = tmp_path / "corpus.jsonl"
    save_corpus(p, DOCS)
    assert load_corpus(p) == {d.id: d for d in DOCS}
    assert not p.with_suffix(".jsonl.tmp").exists()  # written atomically via a temp file
    assert p.read_bytes().count(b"\n") == len(DOCS) and b"\r" not in p.read_bytes()


def test_queries_round_trip(tmp_path):
    p = tmp_path / "queries.jsonl"
    save_queries(p, QUERIES)
    assert load_queries(p) == {q.id: q for q in QUERIES}


def test_qrels_round_trip(tmp_path):
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"42": 3}}
    p = tmp_path / "qrels" / "test.tsv"
    save_qrels(p, qrels)
    assert p.read_text().splitlines()[0] == "query-id\tcorpus-id\tscore"
    assert load_qrels(p) == qrels
    assert list(iter_qrels(p)) == [("q1", "d1", 1), ("q1", "d2", 0), ("q2", "42", 3)]


def test_dataset_round_trip(tiny_data_dir, tmp_path):
    ds = load_dataset(tiny_data_dir)
    assert (len(ds.corpus), len(ds.queries), sorted(ds.qrels)) == (107, 40, ["dev", "test", "train"])
    save_dataset(ds, tmp_path / "copy")
    again = load_dataset(tmp_path / "copy")
    assert (again.corpus, again.queries, again.qrels) == (ds.corpus, ds.queries, ds.qrels)


def test_load_dataset_selected_splits(tiny_data_dir):
    assert available_splits(tiny_data_dir) == ["dev", "test", "train"]
    ds = load_dataset(tiny_data_dir, splits=["train"])
    assert list(ds.qrels) == ["train"]
    assert sum(len(v) for v in ds.qrels["train"].values()) == 26


def test_ids_and_optional_fields(tmp_path):
    p = _write(
        tmp_path / "c.jsonl",
        '{"_id": 7, "text": "int id"}\n{"_id": "x", "text": null, "title": "only title"}\n',
    )
    d7, dx = list(iter_corpus(p))
    assert (d7.id, d7.title, d7.metadata) == ("7", "", {})
    assert (dx.text, dx.full_text) == ("", "only title")
    assert DOCS[0].full_text == "Cell cycle Clocks and cell division." and DOCS[1].full_text == DOCS[1].text


# ------------------------------------------------------------------------------------------------ streaming


def test_iter_corpus_streams_line_by_line(tmp_path):
    good = [json.dumps({"_id": f"d{i}", "text": f"t{i}"}) for i in range(3)]
    p = _write(tmp_path / "corpus.jsonl", "\n".join(good + ["{broken", good[0]]) + "\n")
    it = iter_corpus(p)
    assert [next(it).id for _ in range(3)] == ["d0", "d1", "d2"]  # yielded before the bad line is read
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:4: invalid JSON"):
        next(it)


def test_blank_lines_skipped_but_counted(tmp_path):
    p = _write(tmp_path / "q.jsonl", '{"_id": "a", "text": "x"}\n\n   \n{"_id": "b"}\n')
    e = _error(list, iter_queries(p))
    assert (e.line, e.detail) == (4, "missing field(s) ['text']")
    p2 = _write(tmp_path / "t.tsv", "query-id\tcorpus-id\tscore\nq\td\t1\n\nq\td2\t2\n")
    assert list(iter_qrels(p2)) == [("q", "d", 1), ("q", "d2", 2)]


# ---------------------------------------------------------------------------------------- split/positives


def _ds() -> BeirDataset:
    return BeirDataset(
        root=Path("mem"),
        corpus={},
        queries={},
        qrels={
            "train": {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 0}},
            "test": {"q3": {"d4": 2, "d5": 1}, "q1": {"d6": 1}},
        },
    )


def test_split_qrels_filters_by_score():
    ds = _ds()
    assert ds.split_qrels("train") == {"q1": {"d1": 1}}  # q2 has no relevant doc: dropped
    assert ds.split_qrels("test", min_score=2) == {"q3": {"d4": 2}}
    assert ds.split_qrels("train", min_score=0) == ds.qrels["train"]
    e = _error(ds.split_qrels, "dev")
    assert "no qrels for split 'dev'" in e.detail and "['test', 'train']" in e.detail


def test_all_positives_unions_splits():
    assert _ds().all_positives() == {"q1": {"d1", "d6"}, "q3": {"d4", "d5"}}
    assert _ds().all_positives(min_score=2) == {"q3": {"d4"}}


# ------------------------------------------------------------------------------------------------ errors

JSONL_ERRORS = [
    # (content, line, message fragment)
    ('{"_id": "a", "text": "x"}\n{"_id": "b", "text": \n', 2, "invalid JSON"),
    ('{"_id": "a", "text": "x"}\n["not", "an", "object"]\n', 2, "expected a JSON object, got list"),
    ('{"_id": "a", "text": "x"}\n{"text": "no id"}\n', 2, "missing field(s) ['_id']"),
    ('{"_id": ["a"], "text": "x"}\n', 1, "'_id' must be a string, got list"),
    ('{"_id": true, "text": "x"}\n', 1, "'_id' must be a string, got bool"),
    ('{"_id": "a", "text": 3}\n', 1, "'text' must be a string, got int"),
    ('{"_id": "a", "text": "x", "title": {}}\n', 1, "'title' must be a string, got dict"),
    ('\ufeff{"_id": "a", "text": "x"}\n', 1, "byte-order mark"),
]


@pytest.mark.parametrize(("content", "line", "fragment"), JSONL_ERRORS)
def test_jsonl_errors_name_file_and_line(tmp_path, content, line, fragment):
    p = _write(tmp_path / "corpus.jsonl", content)
    e = _error(load_corpus, p)
    assert (e.path, e.line) == (str(p), line)
    assert fragment in e.detail
    assert str(e).startswith(f"{p}:{line}: ")


def test_non_utf8_reported_on_its_own_line(tmp_path):
    # > 8 KiB before the bad byte: a chunk-decoding reader would blame an earlier line
    lines = [json.dumps({"_id": f"d{i}", "text": "x" * 500}).encode() for i in range(40)]
    lines[30] = lines[30].replace(b"xxx", b"x\xffx", 1)
    p = _write(tmp_path / "corpus.jsonl", b"\n".join(lines) + b"\n")
    e = _error(load_corpus, p)
    assert (e.line, e.detail.split(" (")[0]) == (31, "not valid UTF-8")
    q = _write(
        tmp_path / "qrels.tsv", b"query-id\tcorpus-id\tscore\n" + b"q\td\t1\n" * 2000 + b"q\td\xe9\t1\n"
    )
    e = _error(load_qrels, q)
    assert (e.line, e.detail.split(" (")[0]) == (2002, "not valid UTF-8")


def test_missing_and_empty_files(tmp_path):
    e = _error(load_queries, tmp_path / "nope.jsonl")
    assert (e.detail, e.line) == ("file not found", None)
    e = _error(load_qrels, _write(tmp_path / "empty.tsv", b""))
    assert (e.detail, e.line) == ("file is empty", None)


QRELS_ERRORS = [
    ("query-id,corpus-id,score\nq,d,1\n", 1, "(the file is not TAB-separated)"),
    ("qid\tdid\tscore\nq\td\t1\n", 1, "header must be"),
    ("\ufeffquery-id\tcorpus-id\tscore\n", 1, "byte-order mark"),
    ("query-id\tcorpus-id\tscore\nq\td\t1\nq\td2\n", 3, "expected 3 TAB-separated columns, got 2"),
    ("query-id\tcorpus-id\tscore\nq\td\t1\n\nq\td2\thigh\n", 4, "score must be an integer, got 'high'"),
]


@pytest.mark.parametrize(("content", "line", "fragment"), QRELS_ERRORS)
def test_qrels_errors_name_file_and_line(tmp_path, content, line, fragment):
    p = _write(tmp_path / "qrels" / "train.tsv", content)
    e = _error(load_qrels, p)
    assert (e.path, e.line) == (str(p), line)
    assert fragment in e.detail


def test_load_dataset_folder_errors(tmp_path):
    e = _error(load_dataset, tmp_path / "missing")
    assert "dataset folder not found" in e.detail
    (tmp_path / "ds").mkdir()
    e = _error(load_dataset, tmp_path / "ds")
    assert e.path == str(tmp_path / "ds" / "qrels") and "no qrels/*.tsv" in e.detail
