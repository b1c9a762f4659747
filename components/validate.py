from kfp.dsl import Dataset, Input, Markdown, Output

from components._env import component


@component
def validate_data(data: Input[Dataset], params_json: str, lineage_json: str, report: Output[Markdown]) -> str:
    """Great Expectations checks; a failure raises and stops the run before embedding. Returns the data version."""
    import json
    import os

    os.environ.update(
        {
            "HARDNEG_DATA_VERSION": json.loads(lineage_json)["data_version"],
            "HARDNEG_GIT_COMMIT": json.loads(lineage_json)["git_commit"],
        }
    )
    from hardneg.stages import validate_stage

    meta = validate_stage(data.path, json.loads(params_json), report.path)
    report.metadata.update({**json.loads(lineage_json), "warnings": meta["warnings"]})
    return meta["data_version"]
