"""Typed settings (hardneg.settings): every params.yaml key is declared with a type; a typo or a wrongly typed value
fails at load time with an error naming the key; the defaults live only in the packaged params file."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from hardneg.config import default_params, load_params
from hardneg.errors import ConfigError
from hardneg.settings import SECTIONS, Settings, settings

pytestmark = pytest.mark.unit


def _write(tmp_path, doc):
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "doc, needle",
    [
        ({"train": {"max_stpes": 10}}, "train.max_stpes"),
        ({"train": {"bi_encoder": {"lr": "3e-4"}}}, "train.bi_encoder.lr must be float, got '3e-4'"),
        ({"train": {"max_steps": 8.5}}, "train.max_steps must be int"),
        ({"train": {"max_steps": True}}, "train.max_steps must be int"),
        (
            {"evaluate": {"first_stage": "sparse"}},
            "evaluate.first_stage must be one of ['dense', 'bm25', 'hybrid']",
        ),
        ({"embed": {"models": [{"name": "m", "wieght": 1}]}}, "embed.models[0].wieght"),
        ({"embed": {"models": [{"name": "m", "weight": "heavy"}]}}, "embed.models[0].weight must be float"),
        ({"pipeline": {"resources": {"train": {"cpu": 8, "memory": "1Gi"}}}}, "pipeline.resources.train.cpu"),
        ({"mine": {"top_k": "100"}}, "mine.top_k must be int"),
        ({"mine": {"topk": 100}}, "topk"),
        ({"serve": {"intra_op_threads": "2"}}, "serve.intra_op_threads must be int or null"),
    ],
)
def test_wrong_keys_and_types_fail_at_load_naming_the_key(tmp_path, doc, needle):
    with pytest.raises(ConfigError) as e:
        load_params(_write(tmp_path, doc))
    assert needle in str(e.value)


def test_valid_overrides_load_and_are_typed(tmp_path):
    p = _write(tmp_path, {"train": {"max_steps": 5, "bi_encoder": {"lr": 1}}, "reduce": {"n_components": 64}})
    s = settings(load_params(p))
    assert (
        s.train.max_steps == 5 and isinstance(s.train.bi_encoder.lr, float) and s.train.bi_encoder.lr == 1.0
    )
    assert s.reduce.n_components == 64 and s.train.bi_encoder.tune == "query"  # the rest: packaged defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.train.max_steps = 6  # type: ignore[misc]


def test_every_default_key_is_declared_and_no_declared_key_lacks_a_default():
    """Defaults in one place: the dataclasses declare no section default that the YAML doesn't have, and the YAML
    has no key the dataclasses don't declare (settings() would refuse it)."""
    d = default_params()
    assert set(d) == set(SECTIONS) | {"mine"}
    for name, cls in SECTIONS.items():
        flds = {f.name for f in dataclasses.fields(cls)}
        assert set(d[name]) == flds, name
        assert all(f.default is dataclasses.MISSING for f in dataclasses.fields(cls)), name
    s = settings({})
    assert isinstance(s, Settings) and s.train.max_steps == d["train"]["max_steps"]


def test_a_partial_dict_takes_the_packaged_defaults():
    s = settings({"mine": {"policy": "paper"}})
    assert s.mine.policy == "paper" and s.mine.top_k == default_params()["mine"]["top_k"]
    with pytest.raises(ConfigError, match="unknown section"):
        settings({"trian": {}})


def test_settings_carry_their_validated_dict_and_overrides_rebuild_both():
    """Stages take Settings built once at the door; the modules below that still read a dict get ``.params``, the
    validated dict the settings came from. An override changes the typed values and that dict together, is checked
    again, and leaves the original as it was."""
    s = settings({"mine": {"policy": "paper"}})
    assert settings(s) is s  # built once: handing Settings on does not rebuild them
    assert s.params == settings(s.params).params and settings(s.params) == s
    p = s.params
    p["mine"]["policy"] = "random"  # a copy: the caller cannot change the settings' dict
    assert s.params["mine"]["policy"] == "paper"
    r = s.override({"mine": {"policy": "random"}, "train": {"max_steps": 2}})
    assert (r.mine.policy, r.params["mine"]["policy"], r.train.max_steps, r.params["train"]["max_steps"]) == (
        "random",
        "random",
        2,
        2,
    )
    assert s.mine.policy == "paper" and s.train.max_steps == default_params()["train"]["max_steps"]
    with pytest.raises(ConfigError, match="max_stpes"):
        s.override({"train": {"max_stpes": 2}})
