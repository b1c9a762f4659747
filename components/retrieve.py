from kfp.dsl import Dataset, Input, Metrics, Output

from components._env import component


@component
def retrieve(
    data: Input[Dataset],
    reduced: Input[Dataset],
    params_json: str,
    lineage_json: str,
    retrieved: Output[Dataset],
    metrics: Output[Metrics],
) -> str:
    """The splits (dev carved / topped up from train) and the first stage of the dev and test queries, decided once
    for every later stage; returns the first stage's name."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import record_metrics, retrieve_stage, use_lineage

    lineage = use_lineage(lineage_json)

    st = retrieve_stage(data.path, reduced.path, settings(json.loads(params_json)), retrieved.path)
    meta = {
        "first_stage": st["name"],
        "bm25_weight": st["bm25_weight"],
        "top_k": st["top_k"],
        **{f"queries/{s}": n for s, n in st["queries"].items()},
    }
    retrieved.metadata.update({**lineage, **meta})
    record_metrics(metrics, meta)
    return str(st["name"])
