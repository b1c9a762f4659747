from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._env import component


@component
def export_onnx(
    data: Input[Dataset],
    reduced: Input[Dataset],
    model: Input[Model],
    params_json: str,
    lineage_json: str,
    version: str,
    onnx_model: Output[Model],
    served_metrics: Output[Metrics],
) -> str:
    """ONNX fp32 + int8 with parity gates (a failed gate raises GateFailedError and fails the run), then the served
    variant evaluated on test with the recorded fusion weight: the numbers of what is deployed."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import export_stage, served_evaluation_stage

    params = json.loads(params_json)
    meta = export_stage(data.path, reduced.path, model.path, params, onnx_model.path, version=version)
    onnx_model.metadata.update({**json.loads(lineage_json), "version": version, "parity": meta["parity"]})
    served = served_evaluation_stage(
        data.path,
        reduced.path,
        onnx_model.path,
        params,
        os.path.dirname(served_metrics.path) + "/served-evaluation",
    )
    for k, v in served.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            served_metrics.log_metric(k, v)
    with open(served_metrics.path, "w") as fh:
        json.dump(served, fh)
    return meta["export_dir"]
