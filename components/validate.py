from kfp.dsl import Dataset, Input, Markdown, Output

from components._env import component


@component
def validate_data(data: Input[Dataset], params_json: str, lineage_json: str, report: Output[Markdown]) -> str:
    """Great Expectations checks; a failure raises and stops the run before embedding. Returns the data version."""
    import json

    from hardneg.settings import settings
    from hardneg.stages import use_lineage, validate_stage

    lineage = use_lineage(lineage_json)

    meta = validate_stage(data.path, settings(json.loads(params_json)), report.path)
    report.metadata.update({**lineage, "warnings": meta["warnings"]})
    return meta["data_version"]
