from kfp.dsl import Dataset, Input, Output

from components._env import component


@component
def embed(
    data: Input[Dataset], params_json: str, lineage_json: str, item: dict, embeddings: Output[Dataset]
) -> str:
    """One (model, corpus shard) of the fan-out; the fingerprinted cache (params embed.cache_dir) makes reruns free."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import embed_stage, use_lineage

    lineage = use_lineage(lineage_json)

    meta = embed_stage(data.path, settings(json.loads(params_json)), item, embeddings.path)
    embeddings.metadata.update({**lineage, **meta})
    return meta["fingerprint"]
