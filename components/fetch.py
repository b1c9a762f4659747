from kfp.dsl import Dataset, Output

from components._env import component


@component
def fetch_data(dvc_repo: str, dvc_rev: str, data_path: str, data_version: str, data: Output[Dataset]) -> str:
    """Pull the DVC-tracked dataset at a git revision; data_version (md5 in data.dvc) keys the cache and is checked."""
    from hardneg.stages import fetch_data_stage

    meta = fetch_data_stage(dvc_repo, dvc_rev, data_path, data.path, expected_version=data_version)
    data.metadata.update(meta)
    return meta["data_version"]
