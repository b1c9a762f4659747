"""Seen / unseen parts, document-disjoint folds, the selection rule (hardneg.generalization) and the training
options that target generalisation (pseudo-queries, distillation, epochs; hardneg.biencoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hardneg.biencoder import (
    BiEncoderConfig,
    add_pseudo_queries,
    batch_plan,
    planned_steps,
    pseudo_query_pool,
    train_biencoder,
    training_set,
)
from hardneg.config import default_params
from hardneg.data import load_dataset, prepare_splits
from hardneg.generalization import (
    document_folds,
    drop_candidates,
    exclude_documents,
    fold_dataset,
    parts,
    pooled_qrels,
    select,
    select_across,
    split_ids,
    training_positives,
)

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def ds(tiny_data_dir):
    return load_dataset(tiny_data_dir)


def test_seen_is_a_relevant_document_among_training_positives():
    train_docs = {"d1", "d2"}
    qrels = {"a": {"d1": 1, "d9": 2}, "b": {"d3": 1}, "c": {"d2": 0, "d4": 1}, "e": {"d5": 0}}
    ids = split_ids(qrels, train_docs)
    # c's only training document has score 0 (not relevant): unseen; e has no relevant document at all: left out
    assert ids == {"all": ["a", "b", "c"], "seen": ["a"], "unseen": ["b", "c"]}
    got = parts({"mrr@10": {"a": 1.0, "b": 0.5, "c": 0.0}}, ids)
    assert got["seen"] == {"n": 1, "mrr@10": 1.0}
    assert got["unseen"] == {"n": 2, "mrr@10": 0.25}
    assert got["all"]["mrr@10"] == pytest.approx(0.5)
    assert parts({"mrr@10": {}}, {"unseen": []}) == {"unseen": {"n": 0}}


def test_training_positives_come_from_the_train_split_after_the_dev_top_up(ds):
    params = default_params()
    split, _ = prepare_splits(ds, params)
    train_docs = training_positives(split, "train")
    assert train_docs == {d for docs in split.split_qrels("train").values() for d in docs}
    moved = set(split.split_qrels("dev")) - set(ds.qrels.get("dev", {}))
    # a query moved to dev no longer makes its documents "seen" unless another training query shares them
    assert moved and all(q not in split.qrels["train"] for q in moved)


def _qrels(n_q=60, n_docs=40, per_q=3, seed=0):
    rng = np.random.default_rng(seed)
    return {f"q{i}": {f"d{j}": 1 for j in rng.choice(n_docs, per_q, replace=False)} for i in range(n_q)}


def test_document_folds_never_train_on_a_relevant_document_of_a_test_query():
    qrels = _qrels()
    folds = document_folds(qrels, 3, seed=1, max_test_fraction=0.5)
    assert len(folds) == 3
    held = [f.held_out for f in folds]
    assert not (held[0] & held[1]) and set().union(*held) == {d for r in qrels.values() for d in r}
    for f in folds:
        assert f.test and f.train
        assert not set(f.test) & set(f.train)  # query-disjoint
        train_docs = {d for r in f.train.values() for d in r}
        assert not train_docs & f.held_out  # document-disjoint
        for q, row in f.test.items():
            assert set(row) <= f.held_out and row
            assert f.ignore.get(q, frozenset()) == {d for d in qrels[q] if d not in f.held_out}
        for (
            q
        ) in f.train:  # a train (or carved dev) query's held-out positives leave its candidates: never judged
            assert f.ignore.get(q, frozenset()) == {d for d in qrels[q] if d in f.held_out}
        assert len(f.test) <= 30
    # deterministic, and another seed gives other folds
    assert document_folds(qrels, 3, seed=1, max_test_fraction=0.5)[0].test == folds[0].test
    assert document_folds(qrels, 3, seed=2, max_test_fraction=0.5)[0].held_out != folds[0].held_out


def test_fold_helpers_drop_held_out_negatives_and_ignored_candidates(ds):
    rows = [{"query_id": "q", "negative_ids": ["a", "b", "c"], "d_qn": [0.1, 0.2, 0.3], "d_qp": 0.05}]
    got = exclude_documents(rows, {"b"})[0]
    assert got["negative_ids"] == ["a", "c"] and got["d_qn"] == [0.1, 0.3] and got["d_qp"] == 0.05
    assert rows[0]["negative_ids"] == ["a", "b", "c"]  # input untouched
    run = {"q": {"a": 3.0, "b": 2.0}, "r": {"a": 1.0}}
    assert drop_candidates(run, {"q": {"a"}}) == {"q": {"b": 2.0}, "r": {"a": 1.0}}
    fold = document_folds(pooled_qrels(ds), 2, seed=3)[0]
    fds = fold_dataset(ds, fold)
    assert sorted(fds.qrels) == ["test", "train"] and set(ds.qrels) >= {"train", "test"}
    split, _ = prepare_splits(fds, default_params())
    assert not training_positives(split, "train") & fold.held_out


def _cand(all_, unseen, n=50):
    return {"dev": {"all": {"mrr@10": all_}, "unseen": {"mrr@10": unseen, "n": n}}}


def test_selection_rule_guards_unseen_queries():
    c = {"memorise": _cand(0.80, 0.60), "general": _cand(0.75, 0.71), "weak": _cand(0.70, 0.72)}
    got = select(c, baseline_dev_unseen=0.70)
    assert got["chosen"] == "general" and got["passed"] == ["general", "weak"]
    # without the guard (too few unseen queries) the best dev number wins
    few = {k: _cand(v["dev"]["all"]["mrr@10"], v["dev"]["unseen"]["mrr@10"], n=5) for k, v in c.items()}
    assert select(few, 0.70)["chosen"] == "memorise" and select(few, 0.70)["guard"].startswith("skipped")
    # nobody passes: the best dev-unseen
    assert select(c, baseline_dev_unseen=0.99)["chosen"] == "weak"


def test_the_model_guard_refuses_a_tuned_model_worse_than_the_untuned_one_on_unseen_queries():
    # the served guard alone cannot tell these apart: the evaluate stage pinned every served dev-unseen at the
    # first stage (0.70); the tuned model alone on the dev-unseen queries can
    c = {"memorise": _cand(0.80, 0.70), "general": _cand(0.76, 0.70), "timid": _cand(0.72, 0.70)}
    model = {"memorise": 0.60, "general": 0.63, "timid": 0.625}
    assert (
        select(c, 0.70)["chosen"] == "memorise"
    )  # no model guard: dev (mostly seen queries) rewards memorising
    got = select(c, 0.70, model_dev_unseen=model, untuned_dev_unseen=0.62)
    assert got["chosen"] == "general" and got["passed"] == ["general", "timid"]
    assert got["model_guard"] == "applied" and got["passed_served_guard"] == ["memorise", "general", "timid"]
    # nobody passes the model guard: the best tuned-alone dev-unseen among those passing the served guard
    got = select(c, 0.70, model_dev_unseen=model, untuned_dev_unseen=0.65)
    assert got["passed"] == [] and got["chosen"] == "general"
    # where the guard applies, a candidate without its tuned-alone number was not checked: it fails
    got = select(c, 0.70, model_dev_unseen={"timid": 0.63}, untuned_dev_unseen=0.62)
    assert got["chosen"] == "timid" and got["passed"] == ["timid"]
    # no untuned reference, or no model number at all: the guard is skipped and says so
    for kw in (
        {"model_dev_unseen": model},
        {"model_dev_unseen": dict.fromkeys(c), "untuned_dev_unseen": 0.6},
    ):
        got = select(c, 0.70, **kw)
        assert got["model_guard"] == "skipped" and got["chosen"] == "memorise"
    # too few unseen dev queries: both guards are skipped, whatever the model numbers say
    few = {k: _cand(v["dev"]["all"]["mrr@10"], 0.70, n=5) for k, v in c.items()}
    got = select(few, 0.70, model_dev_unseen=model, untuned_dev_unseen=0.65)
    assert got["chosen"] == "memorise" and got["model_guard"] == "skipped"


def test_pseudo_queries_cover_unlabelled_documents_and_never_negate_a_positive(ds):
    ids, texts = pseudo_query_pool(ds)
    labelled = {d for docs in ds.split_qrels("train").values() for d in docs}
    assert set(ids) - labelled  # documents nobody labelled get pseudo-queries too
    assert all(4 <= len(t.split()) <= 64 for ts in texts for t in ts)
    ts = training_set(ds, None, "train")
    rng = np.random.default_rng(0)
    plan = batch_plan(ts, 4, 0, rng, [])
    n_lab = len(plan[0])
    # make every document a pseudo-query candidate whose text is one of the first query's positives
    q0 = plan[0][0]
    pos = ts.positives[q0]
    pool = (list(pos) + [d for d in ids if d not in pos][:3], [["x y z w"]] * (len(pos) + 3))
    qids, docs, targets, masks = add_pseudo_queries(plan, pool, len(pool[0]), rng, ts.positives)
    assert len(qids) == n_lab + len(pool[0]) and all(q.startswith("\0") for q in qids[n_lab:])
    t0 = targets[0]
    others = {docs.index(d) for d in pos if docs.index(d) != t0}
    assert set(masks[0]) == others  # q0's other positives, added as pseudo targets, are masked for q0


def _cfg(model_dir, **kw):
    base = dict(
        base_model=str(model_dir),
        max_length=64,
        max_steps=10,
        queries_per_step=8,
        lr=1e-3,
        bf16=False,
        seed=5,
        tune="query",
        trainable_layers=None,
    )
    c = BiEncoderConfig.from_params(default_params(), **{**base, **kw})
    return c.replace(trainable_layers=None, torch_threads=None)


def test_epochs_scale_the_steps_with_the_training_pairs(ds, tiny_model_dir):
    ts = training_set(ds, None, "train")
    pairs = sum(len(ts.positives[q]) for q in ts.query_ids)
    assert planned_steps(_cfg(tiny_model_dir), ts) == 10
    assert planned_steps(_cfg(tiny_model_dir, epochs=1.0, max_steps=1000), ts) == -(-pairs // 8)
    assert planned_steps(_cfg(tiny_model_dir, epochs=100.0, max_steps=7), ts) == 7  # max_steps caps


def test_pseudo_queries_and_distillation_train_deterministically(ds, tiny_model_dir, tmp_path):
    from hardneg.biencoder import document_vectors

    c = _cfg(tiny_model_dir, pseudo_queries=0.5, distill=1.0, epochs=2.0, max_steps=100)
    fixed = document_vectors(ds, c, tmp_path / "cache")
    a = train_biencoder(ds, None, tmp_path / "a", c, doc_vectors=fixed)
    b = train_biencoder(ds, None, tmp_path / "b", c, doc_vectors=fixed)
    plain = train_biencoder(
        ds, None, tmp_path / "p", c.replace(pseudo_queries=0.0, distill=0.0), doc_vectors=fixed
    )
    ma, mb, mp = (json.loads((x / "train_metrics.json").read_text()) for x in (a, b, plain))
    ts = training_set(ds, None, "train")
    assert ma["steps"] == ma["planned_steps"] == planned_steps(c, ts)
    assert ma["loss_curve"] == mb["loss_curve"]
    assert ma["loss_curve"] != mp["loss_curve"]
    assert ma["config"]["pseudo_queries"] == 0.5 and ma["config"]["distill"] == 1.0


def test_interpolation_steps_back_towards_the_base_weights(ds, tiny_model_dir, tmp_path):
    """WiSE-FT: interpolate 1.0 saves the tuned weights, 0.5 the midpoint of tuned and base (same training run)."""
    from hardneg.biencoder import document_vectors, load_biencoder

    c = _cfg(tiny_model_dir, max_steps=6, interpolate=1.0)
    fixed = document_vectors(ds, c, tmp_path / "cache")
    tuned = train_biencoder(ds, None, tmp_path / "t", c, doc_vectors=fixed)
    half = train_biencoder(ds, None, tmp_path / "h", c.replace(interpolate=0.5), doc_vectors=fixed)
    base_sd = load_biencoder(tiny_model_dir).state_dict()
    t_sd, h_sd = load_biencoder(tuned).state_dict(), load_biencoder(half).state_dict()
    moved = [k for k, v in t_sd.items() if v.is_floating_point() and not (v == base_sd[k]).all()]
    assert moved  # training changed something
    # the saved model sits halfway between base and tuned (two training runs: equal up to float noise)
    dist_t = sum(float((t_sd[k] - base_sd[k]).norm()) for k in moved)
    dist_h = sum(float((h_sd[k] - base_sd[k]).norm()) for k in moved)
    assert dist_h == pytest.approx(0.5 * dist_t, rel=0.05), (dist_h, dist_t)
    # and the interpolation itself is exact
    from hardneg.biencoder import interpolate_weights

    m = load_biencoder(tuned)
    interpolate_weights(m, load_biencoder(tiny_model_dir), 0.25)
    for k in moved:
        want = 0.25 * t_sd[k] + 0.75 * base_sd[k]
        assert (m.state_dict()[k] - want).abs().max() < 1e-6, k
    with pytest.raises(Exception, match="interpolate"):
        BiEncoderConfig.from_params(default_params(), interpolate=0.0)


def test_the_rule_across_collections_guards_where_it_can_and_averages_the_gain():
    def cell(all_, unseen, n):
        return {"all": {"mrr@10": all_}, "unseen": {"mrr@10": unseen, "n": n}}

    sci = {"memorise": cell(0.80, 0.60, 80), "general": cell(0.74, 0.71, 80), "budget": cell(0.73, 0.70, 80)}
    nf = {"memorise": cell(0.60, 1.0, 1), "general": cell(0.52, 1.0, 1), "budget": cell(0.56, 1.0, 1)}
    base = {
        "sci": {"all": {"mrr@10": 0.68}, "unseen": {"mrr@10": 0.70}},
        "nf": {"all": {"mrr@10": 0.51}, "unseen": {"mrr@10": 1.0}},
    }
    got = select_across({"sci": sci, "nf": nf}, base)
    # only SciFact has enough unseen dev queries to guard; memorise fails it; budget's mean gain (0.05) > general's
    assert got["guarded"] == ["sci"] and got["table"]["memorise"]["passes"] is False
    assert got["chosen"] == "budget" and got["table"]["budget"]["mean_dev_gain"] == pytest.approx(0.05)
    # a configuration missing on one collection does not compete
    got = select_across({"sci": sci, "nf": {k: v for k, v in nf.items() if k != "budget"}}, base)
    assert got["chosen"] == "general" and "budget" not in got["table"]
    # the model guard, where the untuned reference was measured: budget's tuned model lost to the untuned one on
    # SciFact's unseen dev queries, so general wins; NFCorpus (unguarded) cannot fail anyone
    models = {
        "sci": {"memorise": 0.58, "general": 0.64, "budget": 0.61},
        "nf": {"general": 0.1, "budget": 0.1},
    }
    got = select_across({"sci": sci, "nf": nf}, base, models=models, untuned={"sci": 0.62, "nf": 0.5})
    assert got["chosen"] == "general" and got["table"]["budget"]["passes_served_guard"] is True
    assert got["table"]["budget"]["passes"] is False
    assert got["table"]["general"]["mean_dev_unseen_model_gain"] == pytest.approx(0.02)
    assert got["model_guard"] == {"sci": "applied", "nf": "skipped"}
    # every configuration fails the model guard: the best tuned-alone gain among those passing the served guard
    got = select_across({"sci": sci, "nf": nf}, base, models=models, untuned={"sci": 0.70})
    assert not any(r["passes"] for r in got["table"].values()) and got["chosen"] == "general"
