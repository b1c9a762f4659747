"""The strategy matrix on the tiny fixture with the tiny BERT: complete table, HTML report, resume."""

from __future__ import annotations

import json

import pytest

from hardneg.config import default_params

STRATEGIES = ["random", "bm25", "st-default", "st-margin", "paper", "hybrid"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture()
def compare_params(tiny_model_dir):
    p = default_params()
    p["embed"]["models"] = [
        {
            "name": str(tiny_model_dir),
            "weight": 1.0,
            "max_length": 64,
            "batch_size": 32,
            "query_prompt": "",
            "document_prompt": "",
        }
    ]
    p["embed"]["bf16"] = False
    p["embed"]["cache_dir"] = None
    p["mine"]["num_negatives"] = 3
    p["retrieve"]["top_k"] = 30
    p["train"].update(
        {
            "base_model": str(tiny_model_dir),
            "group_size": 4,
            "queries_per_step": 2,
            "lr": 1e-3,
            "bf16": False,
            "max_length": 64,
        }
    )
    p["evaluate"]["fusion_weights"] = [0.0, 0.5, 1.0]
    p["compare"].update(
        {
            "strategies": STRATEGIES,
            "seeds": [1, 2],
            "max_steps": 2,
            "max_length": 64,
            "rerank_depth": 5,
            "num_negatives": 3,
            "time_budget_min": 0,
        }
    )
    p["compare"]["st_relative_margin"] = 0.0005  # the random tiny encoder puts every text at cosine ~1
    return p


def test_compare_on_the_fixture_writes_a_complete_table_and_report(tiny_data_dir, tmp_path, compare_params):
    from hardneg.compare import RESULTS_JSON, run_compare

    out = tmp_path / "cmp"
    summary = run_compare(tiny_data_dir, out, compare_params)
    rows = {r["strategy"]: r for r in summary["table"]}
    refs = {"first stage (dense)", "first stage (BM25)", "untrained reranker"}
    assert set(rows) == refs | set(STRATEGIES)
    for s in STRATEGIES:
        assert rows[s]["n_seeds"] == 2, s
        cell = rows[s]["fusion/mrr@10"]
        assert len(cell["values"]) == 2 and 0.0 <= cell["mean"] <= 1.0 and cell["std"] >= 0.0
    # paired tests of the best policy against every other row
    assert summary["paired_tests"]["best"] == "hybrid"
    assert set(summary["paired_tests"]["vs"]) == refs | {s for s in STRATEGIES if s != "hybrid"}
    for t in summary["paired_tests"]["vs"].values():
        assert 0.0 <= t["p_ttest"] <= 1.0 and 0.0 < t["p_randomization"] <= 1.0
    md = (out / "compare_results.md").read_text()
    for s in STRATEGIES:
        assert f"| {s}" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # MRR bars, distance distributions, PCA curve
    res = json.loads((out / RESULTS_JSON).read_text())
    assert len(res["arms"]) == 12 and all(a["status"] == "done" for a in res["arms"].values())
    # every strategy's negatives carry distances in the shared space (the distribution plot uses them)
    for s in STRATEGIES:
        first = json.loads((out / "negatives" / s / "negatives.jsonl").read_text().splitlines()[0])
        assert "d_qp" in first and "d_qn" in first, s
    # the ST anchor maps texts back to ids and fills the same group size
    assert res["negatives"]["st-default"]["negatives_per_pair"] > 0

    # the report can be regenerated from the JSON alone
    from hardneg.compare import regenerate

    (out / "report.html").unlink()
    assert regenerate(out)["table"] == summary["table"] and (out / "report.html").exists()

    # resume: a rerun trains nothing new and keeps the results
    before = {k: a["seconds"] for k, a in res["arms"].items()}
    run_compare(tiny_data_dir, out, compare_params)
    res2 = json.loads((out / RESULTS_JSON).read_text())
    assert {k: a["seconds"] for k, a in res2["arms"].items()} == before


def test_compare_cli_rejects_unknown_strategies(tiny_data_dir, tmp_path, compare_params):
    from hardneg.compare import run_compare
    from hardneg.errors import ConfigError

    compare_params["compare"]["strategies"] = ["random", "nope"]
    compare_params["compare"]["best"] = "random"
    with pytest.raises(ConfigError, match="unknown strategy"):
        run_compare(tiny_data_dir, tmp_path / "x", compare_params)
