from kfp import dsl
from kfp.dsl import Markdown, Output

from components._env import component


@component
def run_summary(status: dsl.PipelineTaskFinalStatus, lineage_json: str, summary: Output[Markdown]) -> str:
    """Exit handler: runs whether the pipeline succeeded or failed and records its final state with the lineage."""
    import json

    lin = json.loads(lineage_json)
    text = (
        f"# hardneg run: {status.state}\n\n"
        f"- data version: `{lin['data_version']}`\n- git commit: `{lin['git_commit']}`\n- params hash: `{lin['params_hash']}`\n"
        + (f"- error: {status.error_message}\n" if status.error_message else "")
    )
    with open(summary.path, "w") as fh:
        fh.write(text)
    print(text)
    return status.state
