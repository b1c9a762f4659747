"""README's quality numbers come from benchmarks/results/quality.json (written by benchmarks/quality.py), and the
default params are the configuration that won on dev there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from hardneg.study_report import README_END, README_START, readme_table

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
QUALITY = REPO / "benchmarks" / "results" / "quality.json"


def test_readme_quality_block_equals_the_one_generated_from_the_json():
    q = json.loads(QUALITY.read_text(encoding="utf-8"))
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(README_START) : readme.index(README_END) + len(README_END)]
    assert block == readme_table(q), "README.md is stale: run `python benchmarks/quality.py --readme-only`"


def test_default_params_are_the_dev_winner():
    q = json.loads(QUALITY.read_text(encoding="utf-8"))
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    best = q["best_policy"]
    policy = "paper" if best.startswith("paper") else best
    assert params["mine"]["policy"] == policy
    assert params["train"]["bi_encoder"]["drop_without_negative"] == (best == "paper-drop")
    # the ensemble weights are the ones chosen on dev (never set by looking at test)
    chosen = dict(zip(q["ensemble_weights"]["models"], q["ensemble_weights"]["chosen_on_dev"], strict=True))
    from hardneg.embed import model_slug

    used = {model_slug(m["name"]): float(m["weight"]) for m in params["embed"]["models"]}
    assert {k: v for k, v in chosen.items() if v > 0} == {k: v for k, v in used.items() if v > 0}
    assert params["evaluate"]["first_stage"] == q["first_stage_best_on_dev"] == q["first_stage"]["system"]


def test_readme_byo_numbers_come_from_byo_run_json():
    """The "your own corpus" measurement in README is what benchmarks/byo_run.py wrote."""
    import json

    d = json.loads((REPO / "benchmarks" / "results" / "byo_run.json").read_text())
    readme = (REPO / "README.md").read_text()
    sm = d["summary"]["served_metrics"]
    assert d["exit_code"] == 0
    for value in (d["seconds"], d["terminal"]["stdout_lines"], sm["served_mrr@10"], sm["first_stage_mrr@10"]):
        assert f"{value}" in readme, value
    assert f"exit 0 in {d['seconds']} s" in readme
    assert f"{d['terminal']['stdout_lines']} terminal lines" in readme
    assert f"MRR@10 {sm['served_mrr@10']} vs {sm['first_stage_mrr@10']}" in readme


def test_readme_public_quirks_run_comes_from_its_json():
    import json

    d = json.loads((REPO / "benchmarks" / "results" / "byo_run_public_quirks.json").read_text())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert (
        d["exit_code"] == 0
        and d["data"]["grades"] == [0, 1, 2, 3, 4]
        and d["data"]["positives_per_query"] == 30
    )
    assert f"exit 0 in {d['seconds']} s, {d['terminal']['stdout_lines']} terminal lines" in readme
    mined = next(line for line in d["terminal"]["stdout"].splitlines() if " mine " in line and "done" in line)
    pairs = mined.split("· ")[1].split(" pairs")[0]  # e.g. 630/630
    assert f"{pairs} training pairs with a negative" in readme


def test_readme_generalization_block_comes_from_its_json():
    """README's seen/unseen block is what benchmarks/generalization.py writes from generalization.json (folds) and
    generalization_select.json (the configurations under the selection rule)."""
    from hardneg.study_report import GEN_END, GEN_START, generalization_table

    results = REPO / "benchmarks" / "results"
    folds, select, select_nf, choice = (
        json.loads((results / f"generalization{x}.json").read_text(encoding="utf-8"))
        for x in ("", "_select", "_select_nfcorpus", "_choice")
    )
    assert set(folds["datasets"]) == {"scifact", "nfcorpus"}
    for d in folds["datasets"].values():
        assert d["folds"] and {"served", "no_training", "tuned_alone", "untuned_alone"} <= set(d["mean"])
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(GEN_START) : readme.index(GEN_END) + len(GEN_END)]
    assert block == generalization_table(folds, select, select_nf, choice), (
        "README.md is stale: run `python benchmarks/generalization.py readme`"
    )


def test_shipped_training_defaults_are_the_selection_rules_choice():
    """params.yaml's training configuration is the one the written rule chose on dev across collections
    (generalization_choice.json)."""
    from hardneg.settings import merge_params

    choice = json.loads((REPO / "benchmarks" / "results" / "generalization_choice.json").read_text("utf-8"))
    chosen = choice["override"]
    assert choice["table"][choice["chosen"]]["passes"] or not any(
        r["passes"] for r in choice["table"].values()
    )
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert merge_params(params, chosen) == params, f"params.yaml lacks the chosen override {chosen}"


def test_readme_nfcorpus_run_comes_from_its_json():
    d = json.loads((REPO / "benchmarks" / "results" / "byo_run_nfcorpus.json").read_text())
    readme = (REPO / "README.md").read_text()
    sm, m = d["summary"]["served_metrics"], d["summary"]["metrics"]
    assert d["exit_code"] == 0
    assert (
        f"exit 0 in {d['seconds']} s" in readme
        and f"{d['terminal']['stdout_lines']} terminal lines" in readme
    )
    assert f"MRR@10 {sm['served_mrr@10']} vs {sm['first_stage_mrr@10']}" in readme
    assert f"all {m['n/seen']} test queries" in readme and m["n/unseen"] == 0


def corpus_vectors_claims(d: dict) -> list[str]:
    """The README's "what it costs at 1M documents" numbers, as benchmarks/corpus_vectors.py measured them."""
    m = d["at_1M"]
    return [
        f"{d['n']:,} synthetic vectors",
        f"dimension {d['dim']}",
        f"**{m['file_bytes'] / 1e6:.0f} MB** on disk",
        f"**{m['rss_bytes'] / 1e9:.2f} GB** of RAM",
        f"**{m['load_s']:.1f} s** to load",
        f"**{m['sha256_s']:.1f} s** to verify",
    ]


def test_readme_corpus_vectors_cost_comes_from_its_json():
    d = json.loads((REPO / "benchmarks" / "results" / "corpus_vectors.json").read_text())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert d["loaded"] == d["n"] and d["at_1M"]["file_bytes"] > 1e6 * (32 + 2 * d["dim"])
    for claim in corpus_vectors_claims(d):
        assert claim in readme, claim


def export_time_claims(d: dict) -> list[str]:
    """The README's export timing, as benchmarks/export_time.py measured both sides in one run."""
    b, a = d["sides"]["before"], d["sides"]["after"]
    return [
        f"--before {d['before_ref']}",
        f"before **{b['export_component_s']:.0f} s** (export {b['export_s']:.0f} s, served evaluation "
        f"{b['served_evaluation_s']:.0f} s)",
        f"after **{a['export_component_s']:.0f} s** (export {a['export_s']:.0f} s, served evaluation "
        f"{a['served_evaluation_s']:.1f} s)",
        f"{d['speedup']['export_component_s']}x",
    ]


def test_readme_export_time_comes_from_its_json():
    d = json.loads((REPO / "benchmarks" / "results" / "export_time.json").read_text())
    readme = " ".join((REPO / "README.md").read_text().split())
    assert list(d["sides"]) == d["order"] and set(d["order"]) == {"before", "after"}
    # the after side shipped the corpus vectors and its served evaluation embedded no document
    assert d["sides"]["after"]["corpus_vectors"]["shipped"] is True
    assert d["sides"]["after"]["corpus_vectors"]["passed"] is True
    assert "corpus_vectors.npy" in d["sides"]["after"]["files"]
    cache = d["sides"]["after"]["served_doc_cache"]
    assert cache["misses"] == 0 and cache["hits"] > 0 and cache["preloaded"] > 0
    for claim in export_time_claims(d):
        assert claim in readme, claim


def test_readme_serving_memory_numbers_come_from_serving_memory_json():
    """The "Memory at constant load" paragraph prints what benchmarks/serving_memory.py wrote, and the shipped
    serve.openvino_runtime_cache is the setting that did not leak there."""
    d = json.loads((REPO / "benchmarks" / "results" / "serving_memory.json").read_text())
    readme = (REPO / "README.md").read_text()
    old, new = d["runs"]["runtime_cache=5000,arenas=default"], d["runs"]["runtime_cache=64,arenas=default"]
    for run in (old, new):
        assert f"{run['soak'][0]['rss_mb']} -> {run['soak'][-1]['rss_mb']} MB" in readme
        assert f"`soak_growth` {run['soak_growth']}" in readme
    assert f"({old['soak_requests']} requests after the first round)" in readme
    assert old["leak"] is True and new["leak"] is False
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    assert params["serve"]["openvino_runtime_cache"] == new["openvino_runtime_cache"]


def test_readme_make_run_time_comes_from_pipeline_runs_json():
    """README's `make run` timing is what benchmarks/pipeline_run.py wrote: a fresh clone, cold then cached, with the
    CPU it ran on."""
    d = json.loads((REPO / "benchmarks" / "results" / "pipeline_runs.json").read_text())
    readme = (REPO / "README.md").read_text()
    cold, cached = d["runs"][0], d["runs"][1]
    assert cold["exit_code"] == 0 and cached["exit_code"] == 0 and cached["tasks_executed"] == []
    assert f"**{cold['make_run_wall_s']} s cold**" in readme
    assert f"{cached['make_run_wall_s']} s for the unchanged rerun" in readme
    assert f"fresh clone at {d['git']['commit'][:7]}" in readme and not d["git"]["tracked_files_modified"]
    assert d["machine"]["cpu"]["model"] in readme


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_readme_document_prior_numbers_come_from_document_prior_json():
    d = json.loads((REPO / "benchmarks" / "results" / "document_prior.json").read_text(encoding="utf-8"))
    readme = _flat((REPO / "README.md").read_text(encoding="utf-8"))
    u, c = d["untuned"]["test/unseen"], {n: v["parts"]["test/unseen"] for n, v in d["configs"].items()}

    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    assert not d["commit"].endswith("-dirty") and d["seed"] == 13
    assert (
        f"Training positives are {d['training_positives']} of the {d['corpus']} SciFact documents" in readme
    )
    assert (
        f"their share is {pct(u['top10_training_positive_share'])} for the untuned model, "
        f"{pct(c['default']['top10_training_positive_share'])} for the shipped configuration and "
        f"{pct(c['no-wise']['top10_training_positive_share'])} without weight interpolation" in readme
    )
    assert (
        f"(MRR@10 there {u['mrr@10']:.3f} / {c['default']['mrr@10']:.3f} / {c['no-wise']['mrr@10']:.3f})"
        in readme
    )
    dv = [
        d["untuned"]["dev/unseen"],
        *(d["configs"][n]["parts"]["dev/unseen"] for n in ("default", "no-wise")),
    ]
    assert (
        f"({' / '.join(pct(x['top10_training_positive_share']) for x in dv)}) while MRR@10 there is "
        f"{' / '.join(format(x['mrr@10'], '.3f') for x in dv)}" in readme
    )
    # what the paragraph concludes must hold in the JSON: tuning raises the pull, interpolation lowers it
    shares = [u, c["default"], c["no-wise"]]
    assert shares[0]["top10_training_positive_share"] < shares[1]["top10_training_positive_share"]
    assert shares[1]["top10_training_positive_share"] < shares[2]["top10_training_positive_share"]


def test_readme_base_model_cost_comes_from_base_models_json():
    d = json.loads((REPO / "benchmarks" / "results" / "base_models.json").read_text(encoding="utf-8"))
    readme = _flat((REPO / "README.md").read_text(encoding="utf-8"))
    m, b = d["models"]["all-mpnet-base-v2"], d["models"]["all-MiniLM-L6-v2"]
    assert not d["commit"].endswith("-dirty")
    assert (
        f"{m['ms_per_document']} ms per SciFact document against {b['ms_per_document']} ms for all-MiniLM-L6-v2 "
        f"({m['vs_all-MiniLM-L6-v2']}x), so embedding the SciFact corpus alone would take "
        f"{m['corpus_embedding_s']['scifact']:.0f} s, against {d['make_run_budget_s']} s" in readme
    )
    assert m["corpus_embedding_s"]["scifact"] > d["make_run_budget_s"]  # the conclusion the README draws


def test_readme_claim_that_the_model_guard_changed_the_choice_holds_in_the_json():
    choice = json.loads((REPO / "benchmarks" / "results" / "generalization_choice.json").read_text("utf-8"))
    readme = _flat((REPO / "README.md").read_text(encoding="utf-8"))
    table = choice["table"]
    served_only = [n for n, r in table.items() if r["passes_served_guard"]]
    best_without = max(served_only, key=lambda n: table[n]["mean_dev_gain"])
    assert f"without it, `{best_without}` (best mean dev gain" in readme
    assert best_without != choice["chosen"] and not table[best_without]["passes"]
    assert table[best_without]["mean_dev_unseen_model_gain"] < 0


def test_readme_learned_fusion_numbers_come_from_learned_fusion_json():
    d = json.loads((REPO / "benchmarks" / "results" / "learned_fusion.json").read_text(encoding="utf-8"))
    readme = _flat((REPO / "README.md").read_text(encoding="utf-8"))
    e = d["datasets"]["scifact"]
    m, dev, test = e["mean"], e["mean"]["dev_cv"], e["mean"]["test"]
    assert not d["commit"].endswith("-dirty") and [r["seed"] for r in e["seeds"]] == [13, 14, 15]

    def au(row: dict) -> str:
        return f"{row['all']:.3f} / {row['unseen']:.3f}"

    def asu(row: dict) -> str:
        return f"{row['all']:.3f} (seen {row['seen']:.3f} / unseen {row['unseen']:.3f})"

    assert (
        f"first stage {au(dev['first_stage'])}, gate {au(dev['gate'])}, learned fusion "
        f"{au(dev['C=0.001'])} at C = 0.001 and {au(dev['C=0.1'])} at C = 0.1" in readme
    )
    chose = m["seeds_choosing_the_learned_fusion"]
    assert f"the rule would serve it with {chose} of the 3 seeds" in readme
    assert (
        f"test under the rule {asu(test['rule'])} against the gate {asu(test['served_gate'])} and no training "
        f"{asu(test['first_stage'])}" in readme
    )
    tf = e["train_fusion"]
    c = f"C={tf['chosen_C']:g}"
    assert (
        f"test {tf['systems'][c]['test']['all']['mrr@10']:.3f} against {tf['systems']['hybrid']['test']['all']['mrr@10']:.3f}"
        in readme
    )
    # the conclusions the paragraph draws must hold in the JSON
    assert dev["gate"]["unseen"] < dev["first_stage"]["unseen"]  # the gate's dev-unseen, cross-validated
    assert dev["C=0.001"]["all"] > dev["gate"]["all"] and dev["C=0.001"]["unseen"] > dev["gate"]["unseen"]
    assert chose < 3
    assert tf["systems"][c]["test"]["all"]["mrr@10"] < tf["systems"]["hybrid"]["test"]["all"]["mrr@10"]
