"""One pipeline: fetch (DVC) -> validate -> embed (ParallelFor over models x corpus shards) -> reduce -> retrieve
-> mine -> train -> evaluate -> If(quality gate) -> export (parity gates) -> register; an ExitHandler writes a run summary either way.

Parameters come from params.yaml (``pipeline_arguments``). Resources per stage and the GPU option are read from
params ``pipeline`` at definition time (``build_pipeline(params)``); kfp-kubernetes settings (cache PVC, DVC remote
secret) only matter on a cluster and are ignored by the local runner.
"""

from typing import Any

from kfp import dsl, kubernetes

from components.embed import embed
from components.evaluate import evaluate
from components.export import export_onnx
from components.fetch import fetch_data
from components.mine import mine
from components.reduce import reduce
from components.register import register
from components.retrieve import retrieve
from components.summary import run_summary
from components.train import train
from components.validate import validate_data

PIPELINE_NAME = "hardneg"


def _resources(task, spec: dict[str, Any] | None, gpu: bool = False):
    spec = spec or {}
    if spec.get("cpu"):
        task.set_cpu_request(str(spec["cpu"])).set_cpu_limit(str(spec.get("cpu_limit") or spec["cpu"]))
    if spec.get("memory"):
        task.set_memory_request(str(spec["memory"])).set_memory_limit(
            str(spec.get("memory_limit") or spec["memory"])
        )
    if gpu:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)
        kubernetes.add_toleration(task, key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")
    return task


def build_pipeline(params: dict[str, Any]):
    """The @dsl.pipeline function, with per-stage resources from ``params['pipeline']``."""
    pp = params["pipeline"]  # typed and complete (hardneg.settings checks every key at load)
    res = pp["resources"]
    gpu_stages = set(pp["gpu_stages"])
    cluster = pp["cluster"]

    @dsl.pipeline(
        name=PIPELINE_NAME, description="Hard-negative mining -> cross-encoder reranker -> ONNX -> KServe"
    )
    def hardneg_pipeline(
        dvc_repo: str,
        dvc_rev: str,
        data_path: str,
        data_version: str,
        params_json: str,
        lineage_json: str,
        embed_items: list,
        model_version: str,
    ):
        summary = run_summary(lineage_json=lineage_json)
        with dsl.ExitHandler(summary, name="hardneg-run"):
            fetch = fetch_data(
                dvc_repo=dvc_repo, dvc_rev=dvc_rev, data_path=data_path, data_version=data_version
            )
            kubernetes.use_secret_as_env(
                fetch,
                secret_name=cluster["dvc_secret"],
                secret_key_to_env={
                    "AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID",
                    "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
                },
            )
            data = fetch.outputs["data"]
            val = _resources(
                validate_data(data=data, params_json=params_json, lineage_json=lineage_json),
                res.get("validate"),
            )
            with dsl.ParallelFor(items=embed_items, parallelism=2, name="embed-models-x-shards") as item:
                emb = embed(data=data, params_json=params_json, lineage_json=lineage_json, item=item).after(
                    val
                )
                _resources(emb, res.get("embed"), "embed" in gpu_stages)
                kubernetes.mount_pvc(
                    emb,
                    pvc_name=cluster["cache_pvc"],
                    mount_path=cluster["cache_mount"],
                )
            red = _resources(
                reduce(
                    embeddings=dsl.Collected(emb.outputs["embeddings"]),
                    params_json=params_json,
                    lineage_json=lineage_json,
                ),
                res.get("reduce"),
            )
            rt = _resources(
                retrieve(
                    data=data,
                    reduced=red.outputs["reduced"],
                    params_json=params_json,
                    lineage_json=lineage_json,
                ),
                res.get("retrieve"),
            )
            retrieved = rt.outputs["retrieved"]
            mn = _resources(
                mine(
                    data=data,
                    reduced=red.outputs["reduced"],
                    retrieved=retrieved,
                    params_json=params_json,
                    lineage_json=lineage_json,
                ),
                res.get("mine"),
            )
            tr = _resources(
                train(
                    data=data,
                    retrieved=retrieved,
                    negatives=mn.outputs["negatives"],
                    params_json=params_json,
                    lineage_json=lineage_json,
                ),
                res.get("train"),
                "train" in gpu_stages,
            )
            # the base model's document vectors (tune: query) come from the embed stage's cache: train, evaluate
            # and export mount it as embed does, so a cluster run embeds the corpus once
            kubernetes.mount_pvc(tr, pvc_name=cluster["cache_pvc"], mount_path=cluster["cache_mount"])
            ev = _resources(
                evaluate(
                    data=data,
                    retrieved=retrieved,
                    model=tr.outputs["model"],
                    params_json=params_json,
                    lineage_json=lineage_json,
                ),
                res.get("evaluate"),
            )
            kubernetes.mount_pvc(ev, pvc_name=cluster["cache_pvc"], mount_path=cluster["cache_mount"])
            with dsl.If(ev.outputs["Output"] == True, name="quality-gate-passed"):  # noqa: E712 (KFP condition)
                ex = _resources(
                    export_onnx(
                        data=data,
                        retrieved=retrieved,
                        model=tr.outputs["model"],
                        evaluation=ev.outputs["evaluation"],
                        params_json=params_json,
                        lineage_json=lineage_json,
                        version=model_version,
                    ),
                    res.get("export"),
                )
                kubernetes.mount_pvc(ex, pvc_name=cluster["cache_pvc"], mount_path=cluster["cache_mount"])
                register(onnx_model=ex.outputs["onnx_model"], params_json=params_json, version=model_version)

    return hardneg_pipeline
