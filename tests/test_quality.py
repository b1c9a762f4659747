"""The quality study end to end on the fixture with tiny models (hardneg.quality.run_study): the report contract,
equal steps for every arm, resume, significance fields, and the README block generated from quality.json."""

from __future__ import annotations

import json
import shutil

import pytest

from hardneg.config import default_params
from hardneg.data import load_dataset_for
from hardneg.quality import PART_SPLITS
from hardneg.study_report import NOT_MINED

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_data_dir, tiny_model_dir):
    from hardneg.data import load_dataset_for
    from hardneg.embed import embed_dataset
    from hardneg.quality import run_study

    root = tmp_path_factory.mktemp("quality")
    for name in ("tiny-a", "tiny-b"):
        shutil.copytree(tiny_model_dir, root / name)
    p = default_params()
    m = {"max_length": 64, "batch_size": 16, "query_prompt": "", "document_prompt": "", "weight": 1.0}
    p["embed"].update(
        cache_dir=str(root / "cache"),
        models=[{"name": str(root / "tiny-a"), **m}, {"name": str(root / "tiny-b"), **m}],
    )
    p["train"].update(base_model=str(root / "tiny-a"), max_steps=3, torch_threads=None)
    p["train"]["bi_encoder"].update(max_length=64, queries_per_step=4, lr=1e-3)
    p["retrieve"].update(top_k=30, rerank_depth=10)
    p["mine"].update(top_k=30)
    p["compare"].update(
        arms=["untuned", "in-batch", "random", "paper", "paper-drop", "positive-aware"],
        seeds=[1, 2],
        ensemble_weight_grid=[0.0, 1.0],
    )
    ds, _ = load_dataset_for(tiny_data_dir, p)
    embed_dataset(ds, p, root / "emb", progress=False)
    q = run_study(tiny_data_dir, root / "emb", root / "out", p)
    return root, p, q


def test_quality_json_has_the_report_contract(study, tiny_data_dir):
    _, p, q = study
    for key in ("bm25", "dense", "no_training_hybrid", "reranker_alone", "served"):
        for split in ("dev", "test"):
            assert {"mrr@10", "ndcg@10"} <= set(q[key][split]), (key, split)
    # the best policy is the dev argmax over the mined arms, and the headline numbers are that arm's (that the
    # choice reads dev, not test: test_protocol.py::test_the_best_policy_is_the_dev_argmax_over_the_mined_arms)
    best = q["best_policy"]
    dev = {a: r["served"]["dev"]["mrr@10"]["mean"] for a, r in q["arms"].items() if a not in NOT_MINED}
    assert best in dev and dev[best] == max(dev.values()), (best, dev)
    for system, key in (("served", "served"), ("alone", "reranker_alone"), ("rerank", "reranker_rerank")):
        cells = q["arms"][best][system]
        got = {k: v for k, v in q[key].items() if k not in ("what",) + PART_SPLITS}
        assert got == {
            "arm": best,
            **{s: {m: v["mean"] for m, v in cells[s].items()} for s in ("dev", "test")},
        }
        assert q[key]["what"]  # each system says what it computes
    # the report contract of #16: test_seen / test_unseen = {mrr@10, ndcg@10, n} (a part without queries: n only)
    n_test = q["served"]["test_seen"]["n"] + q["served"]["test_unseen"]["n"]
    for key in ("served", "no_training_hybrid", "reranker_alone", "bm25", "dense"):
        for part in ("test_seen", "test_unseen"):
            cell = q[key][part]
            assert set(cell) == ({"n"} if cell["n"] == 0 else {"mrr@10", "ndcg@10", "n"}), (key, part)
        assert q[key]["test_seen"]["n"] + q[key]["test_unseen"]["n"] == n_test
    ds, _ = load_dataset_for(tiny_data_dir, p)
    assert n_test == len(ds.split_qrels(p["data"]["test_split"])) > 0
    for arm in p["compare"]["arms"]:
        cell = q["arms"][arm]["test"]["mrr@10"]
        assert set(cell) == {"mean", "std", "seeds"} and len(cell["seeds"]) == 2
        assert "p_vs_best" in q["arms"][arm]
    assert q["arms"][q["best_policy"]]["p_vs_best"] is None
    assert all(q["arms"][a]["p_vs_best"] is not None for a in q["arms"] if a != q["best_policy"])
    # equal budget: every trained arm ran exactly the configured steps
    assert {a: s for a, s in q["steps_per_arm"].items() if a != "untuned"} == {
        a: 3 for a in p["compare"]["arms"] if a != "untuned"
    }
    assert q["steps_per_arm"]["untuned"] == 0
    assert q["commit"] and q["params_hash"] and q["splits"]["top_up"]["dev_queries"] > 0
    # the no-training baseline's numbers are its system's (that it is the dev argmax:
    # test_the_best_no_training_system_is_chosen_on_dev_not_on_test)
    nt, best_nt = q["no_training"], q["no_training_hybrid"]
    assert {s: best_nt[s] for s in ("dev", "test")} == {s: nt[best_nt["system"]][s] for s in ("dev", "test")}
    # the paper arm dropping queries without a negative trains on fewer queries than the in-batch one
    root = study[0]
    runs = {f.stem: json.loads(f.read_text()) for f in (root / "out" / "runs").glob("*/*.json")}
    used = {k: r["result"]["train"].get("training_set", {}).get("queries_used") for k, r in runs.items()}
    assert used["paper-drop-1"] < used["in-batch-1"]


def test_every_arm_and_seed_trained_the_same_number_of_steps(study):
    """Equal budget, per run (not the summary's first seed): every trained (arm, seed) ran exactly train.max_steps
    (compare.max_steps null), stopped by the step count, not by a clock."""
    root, p, q = study
    runs = [json.loads(f.read_text()) for f in sorted((root / "out" / "runs").glob("*/*.json"))]
    got = {(r["arm"], int(r["seed"])): r["result"] for r in runs}
    assert set(got) == {(a, s) for a in p["compare"]["arms"] for s in p["compare"]["seeds"]}
    budget = p["compare"]["max_steps"] or p["train"]["max_steps"]
    assert budget == 3
    trained = {k: (r["steps"], r["train"]["stopped_by"]) for k, r in got.items() if k[0] != "untuned"}
    assert trained == {k: (budget, "max_steps") for k in got if k[0] != "untuned"}
    assert {r["steps"] for k, r in got.items() if k[0] == "untuned"} == {0}


def test_an_arm_is_the_pipeline_stages_with_its_params_override(study, tiny_data_dir, tmp_path):
    """#17 item 5: the study's (paper, seed 1) numbers are what the pipeline's own stages give with that arm's params
    (quality.arm_params), run by hand here as the CLI runs them: embed -> reduce -> retrieve -> mine -> train ->
    evaluate. Served, rerank and alone, dev and test, by part, bit for bit."""
    from hardneg import stages
    from hardneg.quality import arm_params, stage_result
    from hardneg.settings import settings

    root, p, q = study
    runs = {f.stem: json.loads(f.read_text()) for f in (root / "out" / "runs").glob("*/*.json")}
    ours = runs["paper-1"]["result"]
    weights = q["ensemble_weights"]["chosen_on_dev"]
    ap = arm_params(
        p, "paper", seed=1, max_steps=3, num_negatives=p["compare"]["num_negatives"], ensemble_weights=weights
    )
    assert ap["mine"]["policy"] == "paper" and ap["train"]["seed"] == 1 and ap["train"]["eval_every"] == 0
    assert [m["weight"] for m in ap["embed"]["models"]] == weights
    w, ap = tmp_path, settings(ap)  # the door: typed settings, built once
    stages.embed_stage(tiny_data_dir, ap, None, w / "emb")
    stages.reduce_stage([w / "emb"], ap, w / "red")
    stages.retrieve_stage(tiny_data_dir, w / "red", ap, w / "ret")
    stages.mine_stage(tiny_data_dir, w / "red", w / "ret", ap, w / "mined")
    stages.train_stage(tiny_data_dir, w / "ret", w / "mined", ap, w / "model")
    stages.evaluate_stage(tiny_data_dir, w / "ret", w / "model", ap, w / "eval")
    by_hand, per_query = stage_result(w / "eval")
    for system in ("served", "rerank", "alone"):
        assert by_hand[system] == ours[system], system
        assert per_query[system] == runs["paper-1"]["per_query"][system]
    assert by_hand["rerank_depth"] == ours["rerank_depth"] and by_hand["fusion_gate"] == ours["fusion_gate"]


def test_every_arm_override_is_valid_params_that_change_what_the_arm_names():
    """Each arm's params build (hardneg.settings checks every key) and differ from the paper arm's only where the arm
    says: an arm that silently ran the default would fail here."""
    from hardneg.quality import ARMS, arm_params
    from hardneg.settings import settings

    p = default_params()
    names = [str(m["name"]) for m in p["embed"]["models"]]

    def of(arm):
        return arm_params(
            p, arm, seed=7, max_steps=11, num_negatives=5, ensemble_weights=[1.0, 0.5], single_model=names[1]
        )

    base = settings(of("paper"))
    assert (base.train.seed, base.train.max_steps, base.mine.num_negatives) == (7, 11, 5)
    assert base.train.bi_encoder.epochs is None and base.train.eval_every == 0
    assert [m.weight for m in base.embed.models] == [1.0, 0.5]
    changed = {}
    for arm in ARMS:
        s = settings(of(arm))
        changed[arm] = {f for f in ("embed", "reduce", "mine", "train") if getattr(s, f) != getattr(base, f)}
    assert changed["paper"] == set()
    assert changed["untuned"] == {"train"} and settings(of("untuned")).train.max_steps == 0
    assert settings(of("in-batch")).train.bi_encoder.negatives_per_query == 0
    assert settings(of("paper-drop")).train.bi_encoder.drop_without_negative is True
    assert changed["paper-pca80"] == {"reduce"} and settings(of("paper-pca80")).reduce.variance == 0.8
    assert settings(of("paper-no-pca")).reduce.variance is None
    assert [m.name for m in settings(of("paper-single-model")).embed.models] == [names[1]]
    for arm in ("random", "bm25", "st-default", "positive-aware", "hybrid"):
        assert changed[arm] == {"mine"} and settings(of(arm)).mine.policy == arm


def test_rerun_resumes_without_training_again(study, tiny_data_dir):
    from hardneg.quality import run_study

    root, p, q = study
    before = {f: f.stat().st_mtime_ns for f in (root / "out" / "runs").glob("*/*.json")}
    q2 = run_study(tiny_data_dir, root / "emb", root / "out", p)
    after = {f: f.stat().st_mtime_ns for f in (root / "out" / "runs").glob("*/*.json")}
    assert before == after  # nothing retrained
    assert q2["arms"] == q["arms"]


def test_the_best_no_training_system_is_chosen_on_dev_not_on_test(
    study, tiny_data_dir, tmp_path, monkeypatch
):
    """Two no-training systems added to the study's, one perfect on dev and reversed on test, the other the other way
    round: the baseline the served system must beat (no_training_hybrid) is the dev one, though test picks the other.
    (On the fixture the real systems tie on dev and on test, so they cannot tell the two rules apart.)"""
    import hardneg.quality as quality

    root, p, _ = study
    real = quality.no_training_systems

    def with_two_oracles(dataset, *args):
        systems = real(dataset, *args)
        docs = sorted(dataset.corpus)
        for right, wrong in (("dev", "test"), ("test", "dev")):
            run = {}
            for split, sign in ((right, 1.0), (wrong, -1.0)):
                for q, pos in dataset.split_qrels(p["data"][f"{split}_split"]).items():
                    run[q] = {
                        d: float(len(docs) - i) + (sign * 1000.0 if d in pos else 0.0)
                        for i, d in enumerate(docs)
                    }
            systems[f"oracle-on-{right}"] = {"run": run, "weight": None}
        return systems

    monkeypatch.setattr(quality, "no_training_systems", with_two_oracles)
    q = quality.run_study(tiny_data_dir, root / "emb", tmp_path / "out", p, arms=["untuned"], seeds=[1])
    nt = q["no_training"]
    # test labels would pick the other one
    assert nt["oracle-on-test"]["test"]["mrr@10"] > nt["oracle-on-dev"]["test"]["mrr@10"]
    assert q["no_training_hybrid"]["system"] == "oracle-on-dev"
    assert q["no_training_hybrid"]["test"] == nt["oracle-on-dev"]["test"]


def test_readme_block_is_generated_from_the_json(study):
    """Each row of the system table prints its own numbers: every cell gets a distinct sentinel first (on the
    fixture the served number is also printed in the best arm's row, and BM25's in three rows)."""
    import copy

    from hardneg.study_report import README_END, README_START, readme_table, replace_readme_block

    q = copy.deepcopy(study[2])
    keys = ("bm25", "dense", "no_training_hybrid", "reranker_alone", "reranker_rerank", "served")
    for i, key in enumerate(keys):
        q[key]["test"] = {"mrr@10": 0.1011 + i / 10, "ndcg@10": 0.1511 + i / 10}
        # the parts: each system's own seen / unseen numbers, the no-training ones beside them
        q[key]["test_seen"] = {"mrr@10": 0.1022 + i / 10, "ndcg@10": 0.5, "n": 3}
        q[key]["test_unseen"] = {"mrr@10": 0.1033 + i / 10, "ndcg@10": 0.5, "n": 5}
    block = readme_table(q)
    assert block.startswith(README_START) and block.endswith(README_END)
    rows = {}
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        rows[cells[0] if cells else line] = cells[1:]
    best, fs, nt = q["best_policy"], q["first_stage"]["system"], q["no_training_hybrid"]["system"]
    labels = (
        "BM25",
        "dense ensemble (PCA)",
        f"best no-training system on dev: `{nt}`",
        f"tuned model alone, retrieving from the whole corpus (`{best}`, mean of seeds)",
        f"tuned model alone, reordering the first stage's top k (k on dev: {q['rerank_depth']})",
        f"served: tuned model fused with `{fs}` (`{best}`)",
    )
    for label, key in zip(labels, keys, strict=True):
        t = q[key]
        parts = [f"{t['test_seen']['mrr@10']:.3f}", f"{t['test_unseen']['mrr@10']:.3f}"]
        assert rows[label] == [f"{t['test']['mrr@10']:.3f}", *parts, f"{t['test']['ndcg@10']:.3f}"], label
    assert "(3 queries)" in block and "(5)" in block  # the part sizes are stated
    # the arm table: each arm's own served test numbers, the best one in bold
    for arm, a in q["arms"].items():
        t = a["served"]["test"]["mrr@10"]
        assert rows[f"**{arm}**" if arm == best else arm][:2] == [
            f"{t['mean']:.3f} ± {t['std']:.3f}",
            ", ".join(f"{x:.3f}" for x in t["seeds"]),
        ], arm
    doc = f"intro\n{README_START}\nstale\n{README_END}\noutro\n"
    assert replace_readme_block(doc, block) == f"intro\n{block}\noutro\n"


def test_only_the_arms_whose_rule_reads_the_positives_are_keyed_by_the_reading():
    """Changing mine.positive_reading reruns the paper-family arms of a study and reuses the others; settings that
    do not change a result (embed shards, the encoding batch) do not invalidate finished runs."""
    import copy

    from hardneg.config import default_params, params_hash
    from hardneg.quality import READING_ARMS, _arm_key, _study_params

    a = default_params()
    b = copy.deepcopy(a)
    b["mine"]["positive_reading"] = "all-positives"
    b["embed"]["shards"] = 4
    b["train"]["bi_encoder"]["batch_size"] = 16
    assert params_hash(_study_params(a)) == params_hash(_study_params(b))
    key = {"cfg": {}, "params": params_hash(_study_params(a))}
    for arm in ("untuned", "in-batch", "random", "bm25", "st-default"):
        assert _arm_key(key, arm, a) == _arm_key(key, arm, b), arm
    for arm in READING_ARMS:
        assert _arm_key(key, arm, a) != _arm_key(key, arm, b), arm
    c = copy.deepcopy(a)
    c["train"]["bi_encoder"]["lr"] = 1e-5  # a setting that changes the model changes every arm's key
    assert params_hash(_study_params(a)) != params_hash(_study_params(c))
