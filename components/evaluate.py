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

    from hardneg.stages import evaluate_stage, record_metrics, summary_markdown, use_lineage

    lineage = use_lineage(lineage_json)

    params = json.loads(params_json)
    summary = evaluate_stage(
        data.path, reduced.path, model.path, params, os.path.dirname(metrics.path) + "/evaluation"
    )
    record_metrics(metrics, summary)
    with open(report.path, "w") as fh:
        fh.write(summary_markdown(summary))
    metrics.metadata.update({**lineage, "summary": summary})
    return bool(summary["gate_passed"])
