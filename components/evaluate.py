from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components._env import component


@component
def evaluate(
    data: Input[Dataset],
    retrieved: Input[Dataset],
    model: Input[Model],
    params_json: str,
    lineage_json: str,
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """First stage vs reranker vs fusion on test (fusion weight, gate and depth chosen on dev); ``evaluation`` gets
    metrics.json, per_query.json and fusion.json (export's input; the model is never written). Returns the quality
    gate: served MRR@10 >= first stage + pipeline.min_gain_mrr10."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import evaluate_stage, record_metrics, summary_markdown, use_lineage

    lineage = use_lineage(lineage_json)

    typed = settings(json.loads(params_json))
    summary = evaluate_stage(data.path, retrieved.path, model.path, typed, evaluation.path)
    evaluation.metadata.update({**lineage, "fusion_weight": summary.get("fusion_weight")})
    record_metrics(metrics, summary)
    with open(report.path, "w") as fh:
        fh.write(summary_markdown(summary))
    metrics.metadata.update({**lineage, "summary": summary})
    return bool(summary["gate_passed"])
