"""Selection policies and guards on hand-made 2-D/3-D vectors where the right answer is known, plus the CLI chain
(embed -> reduce -> mine) on the fixture corpus with the tiny BERT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hardneg.data import BeirDataset, Document, Query
from hardneg.errors import ConfigError, HardnegError
from hardneg.mine import (
    first_rejection,
    mine_negatives,
    near_duplicate,
    paper_conditions,
    perc_pos_threshold,
    positive_aware_keep,
    read_negatives,
    take_diverse,
    text_duplicate_groups,
    write_outputs,
)

pytestmark = pytest.mark.unit


def unit(deg: float) -> np.ndarray:
    r = np.deg2rad(deg)
    return np.array([np.cos(r), np.sin(r)], np.float32)


def d(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - a @ b)


# --------------------------------------------------------------------------------------------- pure rules


def test_paper_conditions_each_separately():
    q, p = unit(0), unit(60)  # d(Q,P) = 0.5
    cands = {
        "keep": unit(-30),  # closer to Q than P is, and far from P
        "fails_cond1_only": unit(-70),  # farther from Q than P is, but closer to Q than to P
        "fails_cond2_only": unit(50),  # closer to Q than P is, but even closer to P (near-duplicate side)
        "fails_both": unit(80),
    }
    C = np.stack(list(cands.values()))
    d_qd = 1 - C @ q
    d_pd = (1 - C @ p)[None, :]
    c1, c2 = paper_conditions(d_qd, np.array([d(q, p)]), d_pd)
    got = dict(zip(cands, zip(c1.tolist(), c2.tolist(), strict=True), strict=True))
    assert got == {
        "keep": (True, True),
        "fails_cond1_only": (False, True),
        "fails_cond2_only": (True, False),
        "fails_both": (False, False),
    }


def test_paper_conditions_hold_against_each_positive():
    q, p1, p2 = unit(0), unit(60), unit(-20)  # p2 is very close to Q (d = 0.06)
    C = np.stack([unit(-30), unit(10)])
    d_qp = np.array([d(q, p1), d(q, p2)])
    d_pd = np.stack([1 - C @ p1, 1 - C @ p2])
    c1, c2 = paper_conditions(1 - C @ q, d_qp, d_pd)
    # -30deg beats p1 but not p2 (0.134 > 0.06) and lies closer to p2 than to Q; 10deg passes both against both
    assert c1.tolist() == [False, True]
    assert c2.tolist() == [False, True]
    # with p1 alone, -30deg qualifies
    c1b, c2b = paper_conditions(1 - C @ q, d_qp[:1], d_pd[:1])
    assert (c1b & c2b).tolist() == [True, True]


def test_perc_pos_cap_is_sign_safe_and_uses_least_similar_positive():
    assert perc_pos_threshold(np.array([0.8, 0.6]), 0.95) == pytest.approx(0.57)
    # negative positive score (possible after PCA centring): cap stays below the positive
    assert perc_pos_threshold(np.array([-0.2]), 0.95) == pytest.approx(-0.21)
    keep = positive_aware_keep(np.array([0.9, 0.58, 0.56, -0.5]), np.array([0.8, 0.6]), 0.95)
    assert keep.tolist() == [False, False, True, True]


def test_near_duplicate_and_rejection_priority():
    s_pd = np.array([[0.99, 0.5, 0.97], [0.1, 0.985, 0.2]])
    assert near_duplicate(s_pd, 0.98).tolist() == [True, True, False]
    code = first_rejection(
        [
            ("labelled_positive", np.array([True, False, False])),
            ("near_duplicate", np.array([True, True, False])),
        ],
        3,
    )
    assert code.tolist()[2] == 0 and code[0] != code[1] and code[0] > 0 and code[1] > 0


def test_take_diverse_skips_duplicates_of_chosen_negatives():
    V = np.stack([unit(0), unit(0.5), unit(40), unit(80)])  # 0 and 1 are near-identical
    code = np.zeros(4, np.int16)
    sel = take_diverse(code, V, 3, 0.98)
    assert sel.tolist() == [0, 2, 3]
    assert code[1] > 0  # marked duplicate_of_negative


def test_text_duplicate_groups_normalise_whitespace_and_case():
    g = text_duplicate_groups(["A  cat\n", "a cat", "dog", "Dog ", "x"])
    assert g[0] == g[1] >= 0 and g[2] == g[3] >= 0 and g[0] != g[2] and g[4] == -1


# ------------------------------------------------------------------------------------- mine_negatives on toys


def _dataset(
    docs: dict[str, str], qrels: dict[str, dict[str, dict[str, int]]], queries: list[str]
) -> BeirDataset:
    return BeirDataset(
        root=Path("."),
        corpus={k: Document(k, v) for k, v in docs.items()},
        queries={q: Query(q, f"query {q}") for q in queries},
        qrels=qrels,
    )


@pytest.fixture()
def toy():
    """One train query q1 (Q at 0deg, positive p1 at 60deg) and decoys of every guarded kind, all close to Q."""
    vec = {
        "p1": unit(60),
        "p_test": unit(0.5),  # q1's positive in the TEST split: the closest doc of all (mining must not know)
        "dup_text": unit(13),  # same text as p1 under another id
        "near_dup": unit(59),  # cos(p1, .) > 0.98, would pass condition 1
        "eval_pos": unit(-12),  # positive of dev query q2 (mining must not know either)
        "good1": unit(-15),
        "good2": unit(-25),
        "cond2_fail": unit(45),  # closer to P than to Q
        "far": unit(-120),
        "other": unit(170),
    }
    texts = {k: f"text of {k}" for k in vec}
    texts["dup_text"] = "Text of   P1"
    qrels = {"train": {"q1": {"p1": 1}}, "dev": {"q2": {"eval_pos": 1}}, "test": {"q1": {"p_test": 1}}}
    ds = _dataset(texts, qrels, ["q1", "q2"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    Q = np.stack([unit(0), unit(170)])
    return ds, D, ids, Q, ["q1", "q2"]


PARAMS = {
    "mine": {
        "policy": "hybrid",
        "top_k": 100,
        "num_negatives": 3,
        "dedup_sim": 0.98,
        "perc_pos": 0.95,
        "seed": 13,
    },
    "data": {"dev_split": "dev", "test_split": "test"},
}


def test_paper_policy_picks_closest_valid_and_guards_everything(toy):
    ds, D, ids, Q, qids = toy
    rows, st = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="paper")
    assert len(rows) == 1
    r = rows[0]
    assert r["query_id"] == "q1" and r["positive_id"] == "p1" and r["policy"] == "paper"
    # the primary negative: smallest d(Q,D) among valid ones. p_test is q1's positive in the TEST split, which mining
    # does not read (honest protocol: a real user has no test labels), so it is an ordinary candidate here
    assert r["negative_ids"] == ["p_test"]
    assert r["d_qp"] == pytest.approx(0.5, abs=1e-5)
    assert r["d_qn"][0] == pytest.approx(d(unit(0), unit(0.5)), abs=1e-5)
    assert r["d_pn"][0] == pytest.approx(d(unit(60), unit(0.5)), abs=1e-5)
    rej = st["rejected"]
    assert rej["labelled_positive"] == 1  # p1 itself (the train label)
    assert "eval_positive" not in rej
    assert rej["duplicate_text"] == 1 and rej["near_duplicate"] == 1
    assert rej["cond2_closer_to_positive"] == 1  # cond2_fail
    assert rej["cond1_not_closer_than_positive"] == 2  # far, other
    assert st["pairs"] == 1 and st["queries_without_negative"] == 0


def test_paper_num_negatives_option_returns_n_in_distance_order(toy):
    ds, D, ids, Q, qids = toy
    rows, _ = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="paper", paper_num_negatives=5)
    assert rows[0]["negative_ids"] == ["p_test", "eval_pos", "good1", "good2"]
    assert rows[0]["d_qn"] == sorted(rows[0]["d_qn"])


@pytest.mark.parametrize("policy", ["paper", "positive-aware", "hybrid", "rank-window", "random", "bm25"])
def test_mining_reads_no_dev_or_test_label(toy, policy):
    """Honest protocol: the mined negatives must not change when dev/test qrels are removed or rewritten."""
    import copy

    ds, D, ids, Q, qids = toy
    run = {"q1": {k: 10.0 - i for i, k in enumerate(ids)}}
    kw = {"bm25_run": run, "policy": policy, "num_negatives": 10, "paper_num_negatives": 5}
    rows, st = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, **kw)
    assert rows[0]["negative_ids"], policy
    for qrels in (
        {"train": ds.qrels["train"]},  # no dev/test labels at all
        {**ds.qrels, "dev": {"q2": {k: 1 for k in ids}}, "test": {"q1": {k: 1 for k in ids if k != "p1"}}},
    ):
        other = copy.copy(ds)
        other.qrels = qrels
        rows2, st2 = mine_negatives(other, D, ids, Q, qids, "train", PARAMS, **kw)
        assert rows2 == rows
        assert st2["rejected"] == st["rejected"]


@pytest.mark.parametrize("policy", ["paper", "positive-aware", "hybrid", "rank-window", "random", "bm25"])
def test_no_policy_returns_a_guarded_document(toy, policy):
    ds, D, ids, Q, qids = toy
    run = {"q1": {k: 10.0 - i for i, k in enumerate(ids)}}  # BM25 run listing every doc, guarded ones first
    rows, st = mine_negatives(
        ds, D, ids, Q, qids, "train", PARAMS, bm25_run=run, policy=policy, num_negatives=10
    )
    negs = set(rows[0]["negative_ids"])
    assert not negs & {"p1", "dup_text", "near_dup"}
    assert len(rows[0]["d_qn"]) == len(rows[0]["negative_ids"]) == len(rows[0]["d_pn"])
    assert st["policy"] == policy


def test_positive_aware_drops_candidates_scoring_near_the_positive(toy):
    ds, D, ids, Q, qids = toy
    rows, st = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="positive-aware", num_negatives=2)
    # sim(Q,P) = 0.5 -> cap 0.475: every guard-passing doc within 60deg of Q is dropped; far and other remain
    assert rows[0]["negative_ids"] == ["far", "other"]
    assert st["rejected"]["above_perc_pos"] == 5  # p_test, eval_pos, good1, good2, cond2_fail


def test_hybrid_applies_cond2_and_the_cap():
    vec = {
        "p": unit(60),
        "a": unit(-62),
        "b": unit(-70),
        "c": unit(58.5),
        "e": unit(100),
        "f": unit(-63),
        "g": unit(-40),
    }
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p": 1}}}, ["q"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    rows, st = mine_negatives(
        ds,
        D,
        ids,
        unit(0)[None],
        ["q"],
        "train",
        {"mine": {"dedup_sim": 0.9999, "num_negatives": 3}},
        policy="hybrid",
    )
    # cap: sim <= 0.475 (> 61.6deg from Q) rejects g. c and e are closer to P than to Q: cond2 rejects them.
    # a (-62) and f (-63) are 1deg apart (cos 0.99985 < dedup 0.9999): both kept
    assert rows[0]["negative_ids"] == ["a", "f", "b"]
    assert st["rejected"]["cond2_closer_to_positive"] == 2 and st["rejected"]["above_perc_pos"] == 1


def test_hybrid_dedups_its_own_negatives():
    vec = {"p": unit(60), "a": unit(-62), "a_copy": unit(-62.2), "b": unit(-80)}
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p": 1}}}, ["q"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    rows, st = mine_negatives(
        ds, D, ids, unit(0)[None], ["q"], "train", {"mine": {"num_negatives": 3}}, policy="hybrid"
    )
    assert rows[0]["negative_ids"] == ["a", "b"]
    assert st["rejected"]["duplicate_of_negative"] == 1
    rows2, _ = mine_negatives(
        ds,
        D,
        ids,
        unit(0)[None],
        ["q"],
        "train",
        {"mine": {"num_negatives": 3}},
        policy="hybrid",
        dedup_negatives=False,
    )
    assert rows2[0]["negative_ids"] == ["a", "a_copy", "b"]


def test_rank_window_counts_ranks_after_the_guards(toy):
    ds, D, ids, Q, qids = toy
    rows, st = mine_negatives(
        ds, D, ids, Q, qids, "train", PARAMS, policy="rank-window", rank_min=1, rank_max=3, num_negatives=5
    )
    # guard-passing order by closeness: p_test (0.5), eval_pos (-12), good1 (-15), good2 (-25), cond2_fail (45),
    # far, other -> ranks 1..2
    assert rows[0]["negative_ids"] == ["eval_pos", "good1"]
    assert st["rejected"]["outside_rank_window"] == 5


def test_multiple_positives_one_row_each_both_readings():
    vec = {"p1": unit(60), "p2": unit(-20), "x": unit(-35), "y": unit(10), "z": unit(120)}
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p1": 1, "p2": 1}}}, ["q"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    rows, st = mine_negatives(
        ds,
        D,
        ids,
        unit(0)[None],
        ["q"],
        "train",
        {"mine": {"positive_reading": "all-positives"}},
        policy="paper",
        paper_num_negatives=3,
    )
    assert [r["positive_id"] for r in rows] == ["p1", "p2"]
    # all-positives: x (-35deg) beats p1 but not p2: rejected by condition 1 against p2; y (10deg) beats both
    assert rows[0]["negative_ids"] == rows[1]["negative_ids"] == ["y"]
    # per-pair (the default): the (q, p1) pair keeps x too, the (q, p2) pair only y; p2 is never p1's negative
    pp, _ = mine_negatives(
        ds, D, ids, unit(0)[None], ["q"], "train", {"mine": {}}, policy="paper", paper_num_negatives=3
    )
    assert pp[0]["negative_ids"] == ["y", "x"] and pp[1]["negative_ids"] == ["y"]
    assert rows[0]["d_qp"] == pytest.approx(0.5, abs=1e-5) and rows[1]["d_qp"] == pytest.approx(
        d(unit(0), unit(-20)), abs=1e-5
    )
    assert rows[0]["d_pn"] != rows[1]["d_pn"]  # per-positive distances
    assert st["pairs"] == 2


def test_query_without_qualifying_negative_is_counted():
    vec = {"p": unit(5), "a": unit(40), "b": unit(-90)}  # the positive is the closest document
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p": 1}, "q2": {"b": 1}}}, ["q", "q2"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    Q = np.stack([unit(0), unit(-91)])
    rows, st = mine_negatives(ds, D, ids, Q, ["q", "q2"], "train", {"mine": {}}, policy="paper")
    by_q = {r["query_id"]: r for r in rows}
    assert by_q["q"]["negative_ids"] == [] and by_q["q"]["d_qn"] == []
    assert st["queries_without_negative"] == 2 and st["pairs_without_negative"] == 2
    assert sum(st["histograms"]["d_qp"]) == 2 and sum(st["histograms"]["d_qn"]) == 0


def test_paper_rescan_matches_full_corpus_scan():
    # Q at 10deg, P at 100deg: the two closest docs lie past the bisector (55deg), so they fail condition 2;
    # the valid one (v) ranks 3rd, outside top_k=1 (+1 for the positive)
    vec = {"p": unit(100), "c1": unit(60), "c2": unit(65), "v": unit(-50), "w": unit(-70)}
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p": 1}}}, ["q"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    Q = unit(10)[None]
    full, _ = mine_negatives(ds, D, ids, Q, ["q"], "train", {"mine": {"top_k": 100}}, policy="paper")
    fast, st = mine_negatives(ds, D, ids, Q, ["q"], "train", {"mine": {"top_k": 1}}, policy="paper")
    assert full[0]["negative_ids"] == fast[0]["negative_ids"] == ["v"]
    assert st["rescans"] == 1
    noscan, _ = mine_negatives(
        ds, D, ids, Q, ["q"], "train", {"mine": {"top_k": 1, "rescan": False}}, policy="paper"
    )
    assert noscan[0]["negative_ids"] == []


def test_random_policy_is_deterministic_with_a_seed(toy):
    ds, D, ids, Q, qids = toy
    a, _ = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="random", num_negatives=3, seed=1)
    b, _ = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="random", num_negatives=3, seed=1)
    seeds = {
        tuple(
            mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="random", num_negatives=3, seed=s)[0][
                0
            ]["negative_ids"]
        )
        for s in range(8)
    }
    assert a == b and len(a[0]["negative_ids"]) == 3
    assert len(seeds) > 1


def test_dense_policies_are_deterministic(toy):
    ds, D, ids, Q, qids = toy
    for pol in ("paper", "hybrid", "positive-aware"):
        assert (
            mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy=pol)[0]
            == mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy=pol)[0]
        )


def test_bad_inputs_fail_with_clear_errors(toy):
    ds, D, ids, Q, qids = toy
    with pytest.raises(ConfigError, match="unknown mining policy"):
        mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="nope")
    with pytest.raises(ConfigError, match="unknown mine option"):
        mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, top_kk=3)
    with pytest.raises(HardnegError, match="not L2-normalised"):
        mine_negatives(ds, D * 2, ids, Q, qids, "train", PARAMS)
    with pytest.raises(HardnegError, match="disagree"):
        mine_negatives(ds, D, ids[:-1], Q, qids, "train", PARAMS)


def test_outputs_and_lineage(tmp_path, toy):
    ds, D, ids, Q, qids = toy
    rows, st = mine_negatives(ds, D, ids, Q, qids, "train", PARAMS, policy="hybrid")
    write_outputs(tmp_path, rows, st, {"mine": PARAMS["mine"]}, {"model:x": "abc"})
    assert read_negatives(tmp_path) == rows
    stats = json.loads((tmp_path / "mine_stats.json").read_text())
    assert set(stats["rejected"]) >= {
        "labelled_positive",
        "near_duplicate",
        "cond2_closer_to_positive",
    }
    assert len(stats["histograms"]["d_qn"]) == len(stats["histograms"]["bin_edges"]) - 1
    lin = json.loads((tmp_path / "lineage.json").read_text())
    assert lin["inputs"]["model:x"] == "abc" and len(lin["inputs"]["negatives_sha256"]) == 64


# --------------------------------------------------------------------------------------- CLI integration


def test_cli_embed_reduce_mine_on_fixture(tmp_path, tiny_data_dir, tiny_model_dir, copy_model):
    from typer.testing import CliRunner

    from hardneg.cli import app

    second = copy_model("tiny-b")
    models = [
        {
            "name": str(tiny_model_dir),
            "weight": 1.0,
            "max_length": 64,
            "batch_size": 16,
            "query_prompt": "",
            "document_prompt": "",
        },
        {
            "name": str(second),
            "weight": 0.5,
            "max_length": 64,
            "batch_size": 16,
            "query_prompt": "query: ",
            "document_prompt": "",
        },
    ]
    params = {
        "embed": {"cache_dir": str(tmp_path / "cache"), "chunk_size": 32, "bf16": False, "models": models},
        "reduce": {"variance": 0.9},
        "mine": {"policy": "hybrid", "top_k": 30, "num_negatives": 4},
    }
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    emb, red, mined = tmp_path / "emb", tmp_path / "red", tmp_path / "mined"
    runner = CliRunner()
    base = ["-c", str(pfile)]
    r = runner.invoke(
        app, [*base, "embed", "--data-dir", str(tiny_data_dir), "--out", str(emb), "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "reduce", "--emb-dir", str(emb), "--out", str(red)])
    assert r.exit_code == 0, r.output
    ret = tmp_path / "retrieved"
    r = runner.invoke(
        app,
        [*base, "retrieve", "--data-dir", str(tiny_data_dir), "--reduced-dir", str(red), "--out", str(ret)],
    )
    assert r.exit_code == 0, r.output
    red_stats = json.loads((red / "reduce.json").read_text())
    assert red_stats["input_dim"] == 64 and red_stats["explained_variance_kept"] >= 0.9
    assert red_stats["n_components"] < 64
    for pol in ("hybrid", "paper"):
        out = mined / pol
        r = runner.invoke(
            app,
            [
                *base,
                "mine",
                "--reduced-dir",
                str(red),
                "--retrieved-dir",
                str(ret),
                "--out",
                str(out),
                "--policy",
                pol,
                "--data-dir",
                str(tiny_data_dir),
                "--no-progress",
            ],
        )
        assert r.exit_code == 0, r.output
        assert "negatives per pair" in r.output and "rejected per rule" in r.output
        rows = read_negatives(out)
        from hardneg.config import load_params
        from hardneg.data import load_dataset_for

        ds, _ = load_dataset_for(tiny_data_dir, load_params(pfile))  # the train split as the stage sees it
        allpos = ds.split_qrels("train")
        assert len(rows) == sum(len(v) for v in ds.split_qrels("train").values())
        for row in rows:
            assert not set(row["negative_ids"]) & set(allpos[row["query_id"]])
            assert len(row["negative_ids"]) <= (4 if pol == "hybrid" else 1)
        lin = json.loads((out / "lineage.json").read_text())
        assert sum(k.startswith("model:") for k in lin["inputs"]) == 2 and "corpus_sha256" in lin["inputs"]
    # a typo'd policy is a one-line error, not a traceback
    r = runner.invoke(
        app,
        [
            *base,
            "mine",
            "--reduced-dir",
            str(red),
            "--retrieved-dir",
            str(ret),
            "--out",
            str(mined / "x"),
            "--policy",
            "papr",
            "--data-dir",
            str(tiny_data_dir),
        ],
    )
    assert r.exit_code == 1 and "unknown mining policy" in r.output


def test_positive_aware_rescans_below_the_cap_when_the_window_is_all_above_it():
    # the positive ranks last (80deg): the whole top-K window scores above the cap (sim <= 0.95 * cos 80deg)
    vec = {
        "p": unit(80),
        "a1": unit(10),
        "a2": unit(20),
        "a3": unit(-30),
        "b1": unit(-90),
        "b2": unit(100),
        "b3": unit(-120),
    }
    ds = _dataset({k: k for k in vec}, {"train": {"q": {"p": 1}}}, ["q"])
    ids = list(vec)
    D = np.stack([vec[k] for k in ids])
    # hybrid also drops b2 (100deg: closer to P than to Q, condition 2)
    for pol, want in (("positive-aware", ["b1", "b2"]), ("hybrid", ["b1", "b3"])):
        rows, st = mine_negatives(
            ds, D, ids, unit(0)[None], ["q"], "train", {"mine": {"top_k": 2, "num_negatives": 2}}, policy=pol
        )
        assert rows[0]["negative_ids"] == want and st["rescans"] == 1, pol
        rows, _ = mine_negatives(
            ds,
            D,
            ids,
            unit(0)[None],
            ["q"],
            "train",
            {"mine": {"top_k": 2, "num_negatives": 2, "rescan": False}},
            policy=pol,
        )
        assert rows[0]["negative_ids"] == [], pol
