from kfp.dsl import Dataset, Input, Metrics, Output

from components._env import component


@component
def mine(
    data: Input[Dataset],
    reduced: Input[Dataset],
    params_json: str,
    lineage_json: str,
    negatives: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Hard negatives for the train split (policy from params mine.policy); returns the number of pairs."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import mine_stage

    meta = mine_stage(data.path, reduced.path, json.loads(params_json), negatives.path)
    negatives.metadata.update({**json.loads(lineage_json), **meta})
    for k, v in meta.items():
        if isinstance(v, (int, float)):
            metrics.log_metric(k, v)
    with open(metrics.path, "w") as fh:
        json.dump(meta, fh)
    return int(meta.get("pairs", 0))
