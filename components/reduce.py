from kfp.dsl import Dataset, Input, Metrics, Output

from components._env import component


@component
def reduce(
    embeddings: Input[list[Dataset]],
    params_json: str,
    lineage_json: str,
    reduced: Output[Dataset],
    metrics: Output[Metrics],
) -> int:
    """Concatenate the models' vectors and fit PCA to the variance target; returns the kept dimension."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import record_metrics, reduce_stage, use_lineage

    lineage = use_lineage(lineage_json)

    stats = reduce_stage([e.path for e in embeddings], settings(json.loads(params_json)), reduced.path)
    keys = ("models", "n_components", "explained_variance_kept", "input_dim", "n_docs")
    meta = {k: stats[k] for k in keys if k in stats}
    reduced.metadata.update({**lineage, **meta})
    record_metrics(metrics, meta)
    return int(meta["n_components"])
