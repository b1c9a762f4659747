"""k8s/ kustomize overlays render and validate offline; the validators reject what they must (docs/stack.md section 6)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from conftest import require_kubectl
from typer.testing import CliRunner

from hardneg.k8s_validate import (
    kustomize_build,
    load_documents,
    validate_builtin,
    validate_document,
    validate_documents,
    validate_inference_service,
    validate_path,
)
from hardneg.release import recurring_run_config

pytestmark = pytest.mark.adapter

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
needs_kubectl = (
    pytest.mark.kubectl
)  # skipped with an install hint without kubectl; fails under CI=true (conftest)


def _render(overlay: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(kustomize_build(K8S / "overlays" / overlay)) if d]


def _by_kind(docs: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    require_kubectl()
    return {o: _render(o) for o in ("dev", "prod")}


@pytest.fixture()
def isvc(rendered) -> dict:
    return copy.deepcopy(_by_kind(rendered["prod"])["InferenceService"][0])


# ----------------------------------------------------------------------------------------------- rendering + rules


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_overlay_renders_and_every_document_validates(rendered, overlay):
    docs = rendered[overlay]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "InferenceService",
        ]
    )
    problems = validate_documents([(overlay, d) for d in docs], "1.31")
    assert problems == [], "\n".join(map(str, problems))
    ns = {"dev": "hardneg-dev", "prod": "hardneg"}[overlay]
    assert all(d["metadata"].get("namespace") == ns for d in docs if d["kind"] != "Namespace")


@needs_kubectl
def test_validate_path_renders_a_kustomization_folder():
    n, problems = validate_path(K8S / "overlays" / "prod")
    assert n == 9 and problems == []


def test_inference_service_contract(rendered):
    for overlay, docs in rendered.items():
        isvc = _by_kind(docs)["InferenceService"][0]
        assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Serverless"
        pred = isvc["spec"]["predictor"]
        assert "canaryTrafficPercent" not in pred  # only a release sets it
        assert (
            pred["serviceAccountName"] == "hardneg-predictor"
            and pred["automountServiceAccountToken"] is False
        )
        assert 1 <= pred["minReplicas"] <= pred["maxReplicas"]
        assert pred["scaleMetric"] == "concurrency" and pred["scaleTarget"] > 0
        (c,) = pred["containers"]
        assert c["name"] == "kserve-container"
        assert c["args"] == [
            "--model_dir",
            "/mnt/models",
            "--http_port",
            "8080",
            "--model_name",
            "hardneg-reranker",
        ]
        assert c["env"][0]["name"] == "STORAGE_URI"
        assert c["env"][0]["value"].startswith({"dev": "pvc://", "prod": "s3://"}[overlay])
        assert c["image"].startswith("ghcr.io/hardneg/hardneg-serving:")
        assert c["ports"] == [{"name": "http1", "containerPort": 8080, "protocol": "TCP"}]
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert set(c["resources"]) == {"requests", "limits"}
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pred["securityContext"]["runAsNonRoot"] is True
        assert pred["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}} in pred["volumes"]


def test_overlays_differ_where_they_should(rendered):
    dev = _by_kind(rendered["dev"])["InferenceService"][0]["spec"]["predictor"]
    prod = _by_kind(rendered["prod"])["InferenceService"][0]["spec"]["predictor"]
    assert prod["minReplicas"] == 2 and dev["minReplicas"] == 1
    assert dev["containers"][0]["image"].endswith(":dev")
    ns = {o: _by_kind(rendered[o])["Namespace"][0]["metadata"]["labels"] for o in rendered}
    assert ns["prod"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert ns["prod"]["pod-security.kubernetes.io/enforce-version"].startswith("v1.")
    assert ns["dev"]["pod-security.kubernetes.io/warn"] == "restricted"


def test_least_privilege_rbac(rendered):
    k = _by_kind(rendered["prod"])
    sas = {sa["metadata"]["name"]: sa for sa in k["ServiceAccount"]}
    assert sas["hardneg-predictor"]["automountServiceAccountToken"] is False
    # nothing grants the predictor any API access
    for rb in k.get("RoleBinding", []) + k.get("ClusterRoleBinding", []):
        assert all(s["name"] != "hardneg-predictor" for s in rb["subjects"])
    assert "ClusterRole" not in k and "ClusterRoleBinding" not in k
    (role,) = k["Role"]
    (rb,) = k["RoleBinding"]
    assert rb["roleRef"]["name"] == role["metadata"]["name"]
    assert rb["subjects"] == [
        {"kind": "ServiceAccount", "name": "hardneg-pipeline-runner", "namespace": "hardneg"}
    ]
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert not {"delete", "deletecollection", "escalate", "bind", "impersonate"} & set(rule["verbs"])
        assert "secrets" not in rule["resources"]
    isvc_rule = next(r for r in role["rules"] if r["apiGroups"] == ["serving.kserve.io"])
    assert isvc_rule["resourceNames"] == ["hardneg-reranker"] and "create" not in isvc_rule["verbs"]


def test_network_policy_and_pdb_select_the_predictor_pods(rendered):
    k = _by_kind(rendered["prod"])
    selector = {"serving.kserve.io/inferenceservice": "hardneg-reranker"}
    (np_,) = k["NetworkPolicy"]
    assert np_["spec"]["podSelector"]["matchLabels"] == selector
    assert np_["spec"]["policyTypes"] == ["Ingress", "Egress"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in np_["spec"]["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"istio-system", "knative-serving", "monitoring"}
    monitoring = next(r for r in np_["spec"]["ingress"] if "monitoring" in str(r["from"]))
    assert {"port": 8080, "protocol": "TCP"} in monitoring["ports"]
    egress_ports = {(p["port"], p["protocol"]) for r in np_["spec"]["egress"] for p in r["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (443, "TCP")} <= egress_ports
    (pdb,) = k["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector
    assert pdb["spec"]["maxUnavailable"] == 1


@needs_kubectl
def test_recurring_run_config_per_overlay(monkeypatch):
    prod, dev = recurring_run_config("prod", K8S), recurring_run_config("dev", K8S)
    for cfg in (prod, dev):
        assert {"experiment", "pipeline_name", "cron", "job_name", "service_account"} <= set(cfg)
        assert len(cfg["cron"].split()) == 6  # KFP cron: seconds first
    assert prod["cron"] != dev["cron"] and dev["experiment"] == "hardneg-dev"
    # the no-kubectl fallback reads the same values
    monkeypatch.setattr("hardneg.k8s_validate.kubectl_path", lambda: None)
    assert recurring_run_config("prod", K8S) == prod and recurring_run_config("dev", K8S) == dev


# --------------------------------------------------------------------------------------------------- negative tests


def test_isvc_unknown_field_fails(isvc):
    assert validate_inference_service(isvc) == []
    isvc["spec"]["predictor"]["containers"][0]["imagePullPolicyy"] = "Always"
    assert validate_inference_service(isvc) == [
        "$.spec.predictor.containers[0]: unknown field 'imagePullPolicyy' for V1Container"
    ]


def test_isvc_unknown_top_level_predictor_field_fails(isvc):
    isvc["spec"]["predictor"]["canaryTraficPercent"] = 10
    assert validate_document(isvc) == [
        "$.spec.predictor: unknown field 'canaryTraficPercent' for V1beta1PredictorSpec"
    ]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (
            lambda p: p.__setitem__("minReplicas", "two"),
            "$.spec.predictor.minReplicas: expected int, got str ('two')",
        ),
        (
            lambda p: p.__setitem__("canaryTrafficPercent", True),
            "$.spec.predictor.canaryTrafficPercent: expected int, got bool (True)",
        ),
        (
            lambda p: p["containers"][0]["ports"][0].__setitem__("containerPort", "8080"),
            "$.spec.predictor.containers[0].ports[0].containerPort: expected int, got str ('8080')",
        ),
        (
            lambda p: p["containers"][0].__setitem__("args", "--model_dir /mnt/models"),
            "$.spec.predictor.containers[0].args: expected a list of str, got str",
        ),
        (
            lambda p: p["containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", "yes"),
            "$.spec.predictor.containers[0].securityContext.readOnlyRootFilesystem: expected bool, got str ('yes')",
        ),
    ],
)
def test_isvc_wrong_type_fails(isvc, mutate, expected):
    mutate(isvc["spec"]["predictor"])
    assert validate_document(isvc) == [expected]


def test_isvc_missing_predictor_fails(isvc):
    isvc["spec"]["predictr"] = isvc["spec"].pop("predictor")
    errs = validate_document(isvc)
    assert "$.spec: unknown field 'predictr' for V1beta1InferenceServiceSpec" in errs
    assert "$.spec.predictor: required" in errs
    del isvc["spec"]
    assert validate_document(isvc) == ["$.spec: required (with a predictor)"]


def test_isvc_missing_required_nested_field_fails(isvc):
    del isvc["spec"]["predictor"]["containers"][0]["name"]
    assert validate_document(isvc) == [
        "$.spec.predictor.containers[0]: Invalid value for `name`, must not be `None`"
    ]


def test_isvc_wrong_api_version_or_missing_name_fails(isvc):
    bad = copy.deepcopy(isvc)
    bad["apiVersion"] = "serving.kserve.io/v1alpha1"
    assert any("apiVersion" in e for e in validate_inference_service(bad))
    del isvc["metadata"]["name"]
    assert validate_document(isvc) == ["$.metadata.name: required"]


def test_isvc_quantities_accept_numbers_but_not_lists(isvc):
    res = isvc["spec"]["predictor"]["containers"][0]["resources"]
    res["limits"]["cpu"] = 2  # an int quantity is valid Kubernetes
    assert validate_document(isvc) == []
    res["limits"]["cpu"] = ["2"]
    assert validate_document(isvc) == [
        "$.spec.predictor.containers[0].resources.limits.cpu: expected ResourceQuantity, got list (['2'])"
    ]


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "reranker"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "r"}},
        "template": {
            "metadata": {"labels": {"app": "r"}},
            "spec": {"containers": [{"name": "c", "image": "img:1", "imagePullPolicy": "Always"}]},
        },
    },
}


def test_builtin_deployment_typo_fails():
    assert validate_builtin(copy.deepcopy(DEPLOYMENT)) == []
    bad = copy.deepcopy(DEPLOYMENT)
    c = bad["spec"]["template"]["spec"]["containers"][0]
    c["imagePullPolicyy"] = c.pop("imagePullPolicy")
    (err,) = validate_document(bad)
    assert "imagePullPolicyy" in err and "Additional properties are not allowed" in err
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["replicas"] = "one"
    (err,) = validate_document(bad)
    assert err.startswith("$.spec.replicas:") and "'one' is not of type 'integer'" in err


def test_kind_without_schema_fails_except_inference_service():
    (err,) = validate_document({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert "no schema for kind Widget" in err
    (err,) = validate_document({"apiVersion": "apps/v1", "kind": "Deploymnt", "metadata": {"name": "w"}})
    assert "no schema for kind Deploymnt" in err
    assert validate_document(["not", "a", "mapping"]) == ["not a Kubernetes object (got list)"]
    assert validate_document({"kind": "ConfigMap"}) == ["$.apiVersion: required"]


def test_validate_path_and_cli_reject_a_bad_file(tmp_path, isvc):
    from hardneg.cli import app

    good, bad = tmp_path / "good.yaml", tmp_path / "bad" / "bad.yaml"
    bad.parent.mkdir()
    good.write_text(yaml.safe_dump_all([isvc, DEPLOYMENT]))
    broken = copy.deepcopy(isvc)
    broken["spec"]["predictor"]["minReplicas"] = "two"
    bad.write_text(yaml.safe_dump(broken))
    assert validate_path(good) == (2, [])
    n, problems = validate_path(tmp_path)  # a plain folder: every *.yaml below it
    assert (
        n == 3 and len(problems) == 1 and "minReplicas" in str(problems[0]) and str(bad) in str(problems[0])
    )
    runner = CliRunner()
    ok = runner.invoke(app, ["k8s-validate", str(good)])
    assert ok.exit_code == 0, ok.output
    res = runner.invoke(app, ["k8s-validate", str(bad)])
    assert res.exit_code == 1 and "minReplicas" in res.output


def test_load_documents_skips_kustomization_documents_in_plain_folders(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    (tmp_path / "extra.yaml").write_text("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n")
    docs = load_documents(tmp_path)
    assert [d["kind"] for _, d in docs] == ["ConfigMap"]
