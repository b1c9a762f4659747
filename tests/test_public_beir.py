"""Public BEIR collections as published: CRLF files, graded 0-4 qrels, 30 positives per query, empty documents and
queries, no dev split. Each goes through validation (passes, with the right warnings) and ``load_dataset_for`` (right
contents; a carved dev split that is deterministic, disjoint from train and identical on a second call); the
refusing settings fail with messages naming the params.yaml key."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from hardneg.config import default_params
from hardneg.data import (
    BeirDataset,
    ReadStats,
    carve_dev_split,
    iter_corpus,
    iter_qrels,
    load_dataset,
    load_dataset_for,
)
from hardneg.errors import ConfigError, DataFormatError
from hardneg.validate import validate_dataset

pytestmark = pytest.mark.unit

N_TRAIN, N_TEST, POSITIVES = 30, 10, 30
EMPTY_DOCS = ["e-empty", "e-blank"]  # empty title and text / whitespace only


@pytest.fixture(scope="module")
def params() -> dict:
    p = default_params()
    p["data"]["dev_min_queries"] = 0  # carving alone here; the top-up has its own test
    return p


def _with(params: dict, section: str, **changes) -> dict:
    return {**params, section: {**params[section], **changes}}


def make_public_beir(root: Path, *, crlf: bool = True, empty_query: bool = False) -> dict:
    """A BEIR folder shaped like a public collection: CRLF everywhere, graded scores 0-4, POSITIVES positives per
    query, two empty documents that qrels rows point at, train + test qrels only. Returns what was written."""
    eol = "\r\n" if crlf else "\n"
    train = [f"q{i}" for i in range(N_TRAIN)]
    test = [f"t{i}" for i in range(N_TEST)]
    docs = [{"_id": d, "title": "", "text": t} for d, t in zip(EMPTY_DOCS, ["", " \t "], strict=True)]
    qrels: dict[str, list[tuple[str, str, int]]] = {"train": [], "test": []}
    for split, qids in (("train", train), ("test", test)):
        for q in qids:
            for j in range(POSITIVES):
                d = f"{q}-d{j}"
                docs.append({"_id": d, "title": f"title {d}", "text": f"graded document {j} for {q}"})
                qrels[split].append((q, d, 1 + j % 4))  # grades 1..4
            docs.append({"_id": f"{q}-neg", "title": "", "text": f"judged not relevant to {q}"})
            qrels[split].append((q, f"{q}-neg", 0))
    qrels["train"].append((train[0], EMPTY_DOCS[0], 2))  # rows pointing at empty documents: dropped with them
    qrels["test"].append((test[0], EMPTY_DOCS[1], 1))
    queries = [{"_id": q, "text": f"what about {q}?"} for q in train + test]
    if empty_query:
        queries.append({"_id": "q-empty", "text": "  "})
        qrels["train"].append(("q-empty", f"{train[1]}-d0", 1))
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir()

    def write(path: Path, lines: list[str]) -> None:
        path.write_bytes(eol.join(lines).encode("utf-8") + eol.encode())

    write(root / "corpus.jsonl", [json.dumps(d) for d in docs])
    write(root / "queries.jsonl", [json.dumps(q) for q in queries])
    for split, rows in qrels.items():
        write(
            root / "qrels" / f"{split}.tsv",
            ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows],
        )
    return {"docs": docs, "queries": queries, "qrels": qrels, "train": train, "test": test}


@pytest.fixture()
def public_dir(tmp_path) -> Path:
    root = tmp_path / "public"
    make_public_beir(root)
    return root


# ------------------------------------------------------------------------------------------------- reading


def test_crlf_files_read_exactly_as_lf(tmp_path):
    crlf, lf = tmp_path / "crlf", tmp_path / "lf"
    make_public_beir(crlf, crlf=True)
    make_public_beir(lf, crlf=False)
    assert b"\r\n" in (crlf / "qrels" / "train.tsv").read_bytes()
    a, b = load_dataset(crlf), load_dataset(lf)
    assert (a.corpus, a.queries, a.qrels) == (b.corpus, b.queries, b.qrels)
    assert not any("\r" in d.id or "\r" in d.text for d in a.corpus.values())
    st = ReadStats()
    rows = list(iter_qrels(crlf / "qrels" / "test.tsv", st))
    assert (st.crlf_lines, st.lines, st.first_crlf_line) == (len(rows) + 1, len(rows) + 1, 1)
    assert {s for _, _, s in rows} == {0, 1, 2, 3, 4}
    st = ReadStats()
    list(iter_corpus(lf / "corpus.jsonl", st))
    assert st.crlf_lines == 0 and st.first_crlf_line is None


def test_mixed_line_endings(tmp_path):
    p = tmp_path / "qrels.tsv"
    p.write_bytes(b"query-id\tcorpus-id\tscore\r\nq\td\t1\nq\td2\t3\r\n")
    st = ReadStats()
    assert list(iter_qrels(p, st)) == [("q", "d", 1), ("q", "d2", 3)]
    assert (st.crlf_lines, st.first_crlf_line) == (2, 1)


# ---------------------------------------------------------------------------------------------- validation


def test_public_collection_passes_validation_with_warnings(public_dir, params):
    report = validate_dataset(public_dir, params)
    assert report.success and report.failures == [], report.failures
    by = {(w.file, w.check): w for w in report.warnings}
    assert set(by) == {
        ("corpus.jsonl", "line_endings"),
        ("queries.jsonl", "line_endings"),
        ("qrels/train.tsv", "line_endings"),
        ("qrels/test.tsv", "line_endings"),
        ("corpus.jsonl", "empty_text"),
        ("qrels/train.tsv", "qrels_to_dropped"),
        ("qrels/test.tsv", "qrels_to_dropped"),
        ("qrels", "no_dev_split"),
    }
    n_docs = 2 + (N_TRAIN + N_TEST) * (POSITIVES + 1)
    assert by[("corpus.jsonl", "line_endings")].count == n_docs
    empty = by[("corpus.jsonl", "empty_text")]
    assert (empty.count, sorted(empty.examples)) == (2, sorted(EMPTY_DOCS))
    assert "validate.empty_documents" in empty.message
    assert by[("qrels/train.tsv", "qrels_to_dropped")].examples == [f"q0 -> {EMPTY_DOCS[0]}"]
    assert by[("qrels/test.tsv", "qrels_to_dropped")].count == 1
    assert "data.dev_seed 13" in by[("qrels", "no_dev_split")].message
    assert report.stats["qrels"]["train"] == {
        "rows": N_TRAIN * (POSITIVES + 1) + 1,
        "queries": N_TRAIN,
        "docs": 931,
    }
    assert all(g["success"] for g in report.gx.values())  # GX itself passed every table (drop = mostly 0)


def test_scores_outside_the_range_name_the_setting(tmp_path, params):
    root = tmp_path / "public"
    make_public_beir(root)
    # graded 0-4 fails under a 0-3 range, naming the key and the value found
    report = validate_dataset(root, _with(params, "validate", score_max=3))
    assert {(f.file, f.check) for f in report.failures} == {
        ("qrels/train.tsv", "score_range"),
        ("qrels/test.tsv", "score_range"),
    }
    for f in report.failures:
        assert "found 4 (above validate.score_max 3)" in f.message
        assert "set validate.score_max: 4 in params.yaml" in f.message
    train_fail = next(f for f in report.failures if f.file == "qrels/train.tsv")
    assert train_fail.count == N_TRAIN * len(range(3, POSITIVES, 4))  # the grade-4 rows only

    p = root / "qrels" / "test.tsv"
    p.write_bytes(p.read_bytes() + b"t1\tt2-neg\t-2\r\nt2\tt1-d0\t9\r\n")
    report = validate_dataset(root, params)
    (f,) = report.failures
    assert (f.file, f.check, f.count) == ("qrels/test.tsv", "score_range", 2)
    assert "found 9 (above validate.score_max 4)" in f.message and "validate.score_max: 9" in f.message
    assert "found -2 (below validate.score_min 0)" in f.message and "validate.score_min: -2" in f.message
    assert {"t1 -> t2-neg (score -2)", "t2 -> t1-d0 (score 9)"} <= set(f.examples)


def test_empty_texts_refused_when_asked(tmp_path, params):
    root = tmp_path / "public"
    make_public_beir(root, empty_query=True)
    report = validate_dataset(root, params)
    assert report.success, report.failures
    (wq,) = [w for w in report.warnings if w.check == "empty_text" and w.file == "queries.jsonl"]
    assert (wq.count, wq.examples) == (1, ["q-empty"]) and "validate.empty_queries" in wq.message

    strict = _with(params, "validate", empty_documents="refuse", empty_queries="refuse")
    report = validate_dataset(root, strict)
    assert not report.success
    by = {(f.file, f.check): f for f in report.failures}
    assert set(by) == {("corpus.jsonl", "empty_text"), ("queries.jsonl", "empty_text")}
    assert by[("corpus.jsonl", "empty_text")].count == 2
    assert "set validate.empty_documents: drop in params.yaml" in by[("corpus.jsonl", "empty_text")].message
    assert "set validate.empty_queries: drop in params.yaml" in by[("queries.jsonl", "empty_text")].message
    assert not any(w.check == "qrels_to_dropped" for w in report.warnings)  # refused, not dropped

    with pytest.raises(DataFormatError, match=r"validate\.empty_documents: drop"):
        load_dataset_for(root, strict)
    with pytest.raises(DataFormatError, match=r"validate\.empty_queries: drop"):
        load_dataset_for(root, _with(params, "validate", empty_queries="refuse"))


def test_bad_policy_value_is_a_config_error(public_dir, params):
    with pytest.raises(
        ConfigError, match=r"validate\.empty_documents must be one of \['drop', 'refuse'\], got 'keep'"
    ):
        validate_dataset(public_dir, _with(params, "validate", empty_documents="keep"))
    with pytest.raises(ConfigError, match="validate.empty_queries"):
        load_dataset(public_dir, empty_queries="ignore")


def test_all_documents_empty_fails(tmp_path, params):
    root = tmp_path / "ds"
    make_public_beir(root)
    (root / "corpus.jsonl").write_text("".join(json.dumps({"_id": d, "text": ""}) + "\n" for d in EMPTY_DOCS))
    report = validate_dataset(root, params)
    assert ("corpus.jsonl", "all_empty") in {(f.file, f.check) for f in report.failures}


# ------------------------------------------------------------------------------------------ load_dataset_for


def test_load_dataset_for_drops_empty_and_carves_dev(tmp_path, params):
    root = tmp_path / "public"
    made = make_public_beir(root, empty_query=True)
    ds, record = load_dataset_for(root, params)

    assert set(EMPTY_DOCS).isdisjoint(ds.corpus) and "q-empty" not in ds.queries
    assert len(ds.corpus) == len(made["docs"]) - 2 and len(ds.queries) == N_TRAIN + N_TEST
    assert ds.dropped == {
        "empty_documents": {"count": 2, "ids": EMPTY_DOCS},
        "empty_queries": {"count": 1, "ids": ["q-empty"]},
        "qrels_rows": {"train": 2, "test": 1},
    }
    # graded scores and 30 positives per query survive
    assert all(len(ds.split_qrels("test")[q]) == POSITIVES for q in made["test"])
    assert ds.qrels["test"]["t3"]["t3-d3"] == 4 and ds.split_qrels("test", min_score=4)["t3"] == {
        f"t3-d{j}": 4 for j in range(3, POSITIVES, 4)
    }

    dev_n = round(0.1 * N_TRAIN)
    dev, train = ds.qrels["dev"], ds.qrels["train"]
    assert len(dev) == dev_n and len(train) == N_TRAIN - dev_n
    assert set(dev).isdisjoint(train) and set(dev) | set(train) == set(made["train"])
    original = {}
    for q, d, s in made["qrels"]["train"]:
        if d not in EMPTY_DOCS and q != "q-empty":
            original.setdefault(q, {})[d] = s
    assert all(dev[q] == original[q] for q in dev)  # whole queries, every row, grades kept
    assert ds.qrels["test"] == load_dataset(root).qrels["test"]
    assert record.pop("top_up")["moved"] == 0
    assert record == {
        "carved": True,
        "split": "dev",
        "from": "train",
        "fraction": 0.1,
        "seed": 13,
        "max_queries": 500,
        "queries": dev_n,
        "rows": dev_n * (POSITIVES + 1),
        "train_queries_left": N_TRAIN - dev_n,
        "query_ids_sha256": hashlib.sha256("\n".join(sorted(dev)).encode()).hexdigest(),
    }
    json.dumps(record)

    again, record2 = load_dataset_for(root, params)  # a second call: identical
    record2.pop("top_up")
    assert (again.qrels, again.corpus, again.queries, record2) == (ds.qrels, ds.corpus, ds.queries, record)

    other, rec_other = load_dataset_for(root, _with(params, "data", dev_seed=14))
    assert rec_other["query_ids_sha256"] != record["query_ids_sha256"] and rec_other["queries"] == dev_n
    capped, rec_capped = load_dataset_for(root, _with(params, "data", dev_fraction=0.5, dev_max_queries=2))
    assert rec_capped["queries"] == len(capped.qrels["dev"]) == 2


def test_load_dataset_for_keeps_an_existing_dev_split(tiny_data_dir, params):
    ds, record = load_dataset_for(tiny_data_dir, params)
    assert record == {"carved": False, "top_up": record["top_up"]} and record["top_up"]["moved"] == 0
    assert ds.qrels == load_dataset(tiny_data_dir).qrels and ds.dropped == {}


def _mem(train: dict, **splits) -> BeirDataset:
    return BeirDataset(root=Path("mem"), corpus={}, queries={}, qrels={"train": train, **splits})


def test_carve_dev_split_is_pure_and_order_independent():
    train = {f"q{i}": {f"d{i}": 1 + i % 3, f"n{i}": 0} for i in range(50)}
    train["q-zero"] = {"dz": 0}  # no positive: never carved into dev
    ds = _mem(train, test={"t": {"dt": 1}})
    before = copy.deepcopy(ds.qrels)
    out, rec = carve_dev_split(ds, fraction=0.2, seed=7, max_queries=None)
    assert ds.qrels == before  # input untouched
    assert rec["queries"] == 10 and len(out.qrels["train"]) == 41 and "q-zero" in out.qrels["train"]
    assert out.qrels["test"] == before["test"]
    # file order does not matter
    rev = _mem(dict(reversed(list(train.items()))), test={"t": {"dt": 1}})
    out_rev, rec_rev = carve_dev_split(rev, fraction=0.2, seed=7, max_queries=None)
    assert set(out_rev.qrels["dev"]) == set(out.qrels["dev"])
    assert rec_rev["query_ids_sha256"] == rec["query_ids_sha256"]
    # a larger fraction extends the smaller one's set; the cap binds
    bigger, _ = carve_dev_split(ds, fraction=0.4, seed=7, max_queries=None)
    assert set(out.qrels["dev"]) < set(bigger.qrels["dev"])
    _, rec_cap = carve_dev_split(ds, fraction=0.4, seed=7, max_queries=3)
    assert rec_cap["queries"] == 3
    # custom split names
    named, rec_named = carve_dev_split(ds, dev_split="valid", fraction=0.2, seed=7, max_queries=None)
    assert set(named.qrels) == {"train", "test", "valid"} and rec_named["split"] == "valid"


def test_carve_dev_split_edge_cases():
    ds = _mem({"q1": {"d": 1}}, dev={"q2": {"d": 1}})
    out, rec = carve_dev_split(ds)
    assert out is ds and rec == {"carved": False}
    two, rec2 = carve_dev_split(_mem({"q1": {"d": 1}, "q2": {"d": 1}}), fraction=0.9)
    assert len(two.qrels["dev"]) == 1 and len(two.qrels["train"]) == 1  # always leaves train a query
    with pytest.raises(DataFormatError, match="too few"):
        carve_dev_split(_mem({"q1": {"d": 1}, "q2": {"d": 0}}))
    with pytest.raises(DataFormatError, match=r"data\.dev_split / data\.train_split"):
        carve_dev_split(BeirDataset(root=Path("mem"), corpus={}, queries={}, qrels={"test": {"t": {"d": 1}}}))
    with pytest.raises(ConfigError, match="data.dev_fraction"):
        carve_dev_split(_mem({"q1": {"d": 1}, "q2": {"d": 1}}), fraction=1.5)
    with pytest.raises(ConfigError, match="data.dev_max_queries"):
        carve_dev_split(_mem({"q1": {"d": 1}, "q2": {"d": 1}}), max_queries=0)


def test_top_up_moves_whole_train_queries_into_a_small_dev_split(params):
    from hardneg.data import top_up_dev_split

    train = {f"q{i}": {f"d{i}": 1, f"e{i}": 2} for i in range(40)}
    ds = _mem(copy.deepcopy(train), dev={"v": {"dv": 1}}, test={"t": {"dt": 1}})
    rec = top_up_dev_split(ds, min_queries=6, max_fraction=0.25, seed=3)
    assert rec["moved"] == 5 and rec["dev_queries"] == 6 and len(ds.qrels["dev"]) == 6
    moved = set(ds.qrels["dev"]) - {"v"}
    assert moved.isdisjoint(ds.qrels["train"]) and len(ds.qrels["train"]) == 35
    assert all(ds.qrels["dev"][q] == train[q] for q in moved) and ds.qrels["test"] == {"t": {"dt": 1}}
    # seeded and order-independent; the cap on the share of train binds
    again = _mem(dict(reversed(list(copy.deepcopy(train).items()))), dev={"v": {"dv": 1}})
    assert (
        top_up_dev_split(again, min_queries=6, max_fraction=0.25, seed=3)["moved_ids_sha256"]
        == rec["moved_ids_sha256"]
    )
    capped = _mem(copy.deepcopy(train), dev={"v": {"dv": 1}})
    assert top_up_dev_split(capped, min_queries=100, max_fraction=0.1, seed=3)["moved"] == 4
    # a dev split that is large enough is left alone
    assert top_up_dev_split(ds, min_queries=6, seed=3)["moved"] == 0
