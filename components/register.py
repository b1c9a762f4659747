from kfp.dsl import Artifact, Input, Model, Output

from components._env import component


@component
def register(onnx_model: Input[Model], params_json: str, version: str, manifests: Output[Artifact]) -> str:
    """Render the versioned canary rollout (kustomize overlay with lineage annotations) for the exported model."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import register_stage

    meta = register_stage(onnx_model.path, settings(json.loads(params_json)), version, manifests.path)
    manifests.metadata.update(meta)
    return meta["release_dir"]
