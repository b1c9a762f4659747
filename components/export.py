from kfp.dsl import Dataset, Input, Metrics, Model, Output

from components._env import component


@component
def export_onnx(
    data: Input[Dataset],
    retrieved: Input[Dataset],
    model: Input[Model],
    evaluation: Input[Dataset],
    params_json: str,
    lineage_json: str,
    version: str,
    onnx_model: Output[Model],
    served_evaluation: Output[Dataset],
    served_metrics: Output[Metrics],
) -> str:
    """ONNX fp32 + int8 with parity gates (a failed gate raises GateFailedError and fails the run), serving the
    fusion the evaluate stage chose (``evaluation``/fusion.json), then the served variant evaluated on test with it:
    the numbers of what is deployed."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import export_stage, record_metrics, served_evaluation_stage, use_lineage

    lineage = use_lineage(lineage_json)

    typed = settings(json.loads(params_json))
    meta = export_stage(
        data.path, retrieved.path, model.path, evaluation.path, typed, onnx_model.path, version=version
    )
    onnx_model.metadata.update({**lineage, "version": version, "parity": meta["parity"]})
    served = served_evaluation_stage(
        data.path,
        retrieved.path,
        onnx_model.path,
        typed,
        served_evaluation.path,
    )
    record_metrics(served_metrics, served)
    return meta["export_dir"]
