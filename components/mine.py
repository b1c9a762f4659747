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

    from hardneg.stages import mine_stage, record_metrics, use_lineage

    lineage = use_lineage(lineage_json)

    meta = mine_stage(data.path, reduced.path, json.loads(params_json), negatives.path)
    negatives.metadata.update({**lineage, **meta})
    record_metrics(metrics, meta)
    return int(meta.get("pairs", 0))
