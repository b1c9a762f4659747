from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components._env import component


@component
def evaluate(
    data: Input[Dataset],
    reduced: Input[Dataset],
    model: Input[Model],
    params_json: str,
    lineage_json: str,
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """First stage vs reranker vs fusion on test (fusion weight tuned on dev, written to the model's fusion.json);
    returns the quality gate: served MRR@10 >= first stage + pipeline.min_gain_mrr10."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import evaluate_stage, summary_markdown

    params = json.loads(params_json)
    summary = evaluate_stage(
        data.path, reduced.path, model.path, params, os.path.dirname(metrics.path) + "/evaluation"
    )
    for k, v in summary.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.log_metric(k, v)
    with open(metrics.path, "w") as fh:
        json.dump(summary, fh)
    with open(report.path, "w") as fh:
        fh.write(summary_markdown(summary))
    metrics.metadata["summary"] = summary
    return bool(summary["gate_passed"])
