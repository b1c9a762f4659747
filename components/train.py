from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._env import component


@component
def train(
    data: Input[Dataset],
    reduced: Input[Dataset],
    negatives: Input[Dataset],
    params_json: str,
    lineage_json: str,
    model: Output[Model],
    metrics: Output[Metrics],
) -> float:
    """Fine-tune the cross-encoder on the mined groups (best dev checkpoint kept); returns best dev MRR@10."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import train_stage

    meta = train_stage(data.path, reduced.path, negatives.path, json.loads(params_json), model.path)
    model.metadata.update({**json.loads(lineage_json), **meta})
    for k, v in meta.items():
        metrics.log_metric(k, v)
    with open(metrics.path, "w") as fh:
        json.dump(meta, fh)
    return float(meta.get("best_dev_mrr@10") or 0.0)
