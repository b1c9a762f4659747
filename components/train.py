from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._env import component


@component
def train(
    data: Input[Dataset],
    retrieved: Input[Dataset],
    negatives: Input[Dataset],
    params_json: str,
    lineage_json: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> float:
    """Fine-tune the cross-encoder on the mined groups (best dev checkpoint kept); returns best dev MRR@10."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import record_metrics, train_stage, use_lineage

    lineage = use_lineage(lineage_json)

    meta = train_stage(
        data.path, retrieved.path, negatives.path, settings(json.loads(params_json)), model.path
    )
    model.metadata.update({**lineage, **meta})
    record_metrics(metrics, meta)
    return float(meta.get("best_dev_mrr@10") or 0.0)
