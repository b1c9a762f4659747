from kfp.dsl import Dataset, Input, Model, Output

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
) -> str:
    """ONNX fp32 + int8 with parity gates; a failed gate raises GateFailedError and fails the run."""
    import json
    import os

    os.environ.update({"HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"], "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"]})
    from hardneg.stages import export_stage

    meta = export_stage(data.path, reduced.path, model.path, json.loads(params_json), onnx_model.path, version=version)
    onnx_model.metadata.update({**json.loads(lineage_json), "version": version, "parity": meta["parity"]})
    return meta["export_dir"]
