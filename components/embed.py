from kfp.dsl import Dataset, Input, Output

from components._env import component


@component
def embed(
    data: Input[Dataset], params_json: str, lineage_json: str, item: dict, embeddings: Output[Dataset]
) -> str:
    """One (model, corpus shard) of the fan-out; the fingerprinted cache (params embed.cache_dir) makes reruns free."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import embed_stage

    meta = embed_stage(data.path, json.loads(params_json), item, embeddings.path)
    embeddings.metadata.update({**json.loads(lineage_json), **meta})
    return meta["fingerprint"]
