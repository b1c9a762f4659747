"""The quality study end to end on the fixture with tiny models (hardneg.quality.run_study): the report contract,
equal steps for every arm, resume, significance fields, and the README block generated from quality.json."""

from __future__ import annotations

import json
import shutil

import pytest

from hardneg.config import default_params

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


def test_quality_json_has_the_report_contract(study):
    _, p, q = study
    for key in ("bm25", "dense", "no_training_hybrid", "reranker_alone", "served"):
        for split in ("dev", "test"):
            assert {"mrr@10", "ndcg@10"} <= set(q[key][split]), (key, split)
    assert q["best_policy"] in q["arms"] and q["best_policy"] not in ("untuned", "in-batch", "random")
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
    # the best no-training system is the dev argmax over the no-training systems
    nt = q["no_training"]
    assert q["no_training_hybrid"]["system"] == max(
        nt, key=lambda n: (nt[n]["dev"]["mrr@10"], nt[n]["dev"]["ndcg@10"])
    )
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


def test_rerun_resumes_without_training_again(study, tiny_data_dir):
    from hardneg.quality import run_study

    root, p, q = study
    before = {f: f.stat().st_mtime_ns for f in (root / "out" / "runs").glob("*/*.json")}
    q2 = run_study(tiny_data_dir, root / "emb", root / "out", p)
    after = {f: f.stat().st_mtime_ns for f in (root / "out" / "runs").glob("*/*.json")}
    assert before == after  # nothing retrained
    assert q2["arms"] == q["arms"]


def test_readme_block_is_generated_from_the_json(study):
    from hardneg.study_report import README_END, README_START, readme_table, replace_readme_block

    _, _, q = study
    block = readme_table(q)
    assert block.startswith(README_START) and block.endswith(README_END)
    assert f"{q['served']['test']['mrr@10']:.3f}" in block
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
