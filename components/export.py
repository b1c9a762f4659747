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

    from hardneg.stages import export_stage, record_metrics, served_evaluation_stage, use_lineage

    lineage = use_lineage(lineage_json)

    params = json.loads(params_json)
    meta = export_stage(data.path, reduced.path, model.path, params, onnx_model.path, version=version)
    onnx_model.metadata.update({**lineage, "version": version, "parity": meta["parity"]})
    served = served_evaluation_stage(
        data.path,
        reduced.path,
        onnx_model.path,
        params,
        os.path.dirname(served_metrics.path) + "/served-evaluation",
    )
    record_metrics(served_metrics, served)
    return meta["export_dir"]
