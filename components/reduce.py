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
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import reduce_stage

    meta = reduce_stage([e.path for e in embeddings], json.loads(params_json), reduced.path)
    reduced.metadata.update({**json.loads(lineage_json), **meta})
    metrics.log_metric("pca_components", meta["n_components"])
    metrics.log_metric("explained_variance_kept", meta["explained_variance_kept"])
    with open(metrics.path, "w") as fh:  # materialise: KFP's local cache misses on an unwritten Metrics file
        json.dump(meta, fh)
    return int(meta["n_components"])
