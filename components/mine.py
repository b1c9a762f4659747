from kfp.dsl import Dataset, Input, Metrics, Output

from components._env import component


@component
def mine(
    data: Input[Dataset],
    reduced: Input[Dataset],
    retrieved: Input[Dataset],
    params_json: str,
    lineage_json: str,
    negatives: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Hard negatives for the train split (policy from params mine.policy); returns the number of pairs."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import mine_stage, record_metrics, use_lineage

    lineage = use_lineage(lineage_json)

    stats = mine_stage(
        data.path, reduced.path, retrieved.path, settings(json.loads(params_json)), negatives.path
    )
    keep = ("policy", "split", "pairs", "pairs_without_negative", "queries_without_negative")
    meta = {k: stats[k] for k in (*keep, "negatives_per_pair_mean", "seconds") if k in stats}
    negatives.metadata.update({**lineage, **meta})
    record_metrics(metrics, meta)
    return int(meta.get("pairs", 0))
