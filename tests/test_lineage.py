"""hardneg.lineage: data version from data.dvc, git commit, params hash, Lineage round trip."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import pytest

from hardneg.config import load_params, params_hash
from hardneg.errors import HardnegError
from hardneg.lineage import (
    LINEAGE_FILE,
    Lineage,
    current_lineage,
    data_version,
    find_repo_root,
    git_commit,
    read_lineage,
    sha256_dir,
    sha256_file,
    write_lineage,
)

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
DVC = """outs:
- md5: {md5}
  size: 8273012
  nfiles: 6
  hash: md5
  path: data
"""


# ----------------------------------------------------------------------------------------------------- data version


def test_data_version_reads_the_md5_in_data_dvc(tmp_path):
    f = tmp_path / "data.dvc"
    f.write_text(DVC.format(md5="0123456789abcdef0123456789abcdef.dir"))
    assert data_version(f) == "0123456789abcdef0123456789abcdef.dir"
    f.write_text(DVC.format(md5="fedcba9876543210fedcba9876543210.dir"))
    assert data_version(f) == "fedcba9876543210fedcba9876543210.dir"  # follows the file, no caching


def test_data_version_of_the_repo_matches_its_data_dvc():
    """Parsed, not searched: the version is the md5 of the one tracked output, the data folder (a directory hash)."""
    import yaml

    v = data_version(REPO / "data.dvc")
    assert re.fullmatch(r"[0-9a-f]{32}\.dir", v)
    outs = yaml.safe_load((REPO / "data.dvc").read_text())["outs"]
    assert [(o["path"], o["md5"], o.get("hash")) for o in outs] == [("data", v, "md5")]


def test_data_version_finds_data_dvc_above_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("HARDNEG_DATA_VERSION", raising=False)
    (tmp_path / "data.dvc").write_text(DVC.format(md5="11111111111111111111111111111111.dir"))
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert find_repo_root() == tmp_path
    assert data_version() == "11111111111111111111111111111111.dir"


def test_data_version_untracked_and_malformed(tmp_path, monkeypatch):
    monkeypatch.delenv("HARDNEG_DATA_VERSION", raising=False)
    assert data_version(tmp_path / "missing.dvc") == "untracked"
    monkeypatch.chdir(tmp_path)  # no data.dvc anywhere above /tmp/...
    if find_repo_root() is None:
        assert data_version() == "untracked"
    bad = tmp_path / "bad.dvc"
    bad.write_text("outs: []\n")
    with pytest.raises(HardnegError, match="cannot read the data version"):
        data_version(bad)
    bad.write_text("outs:\n- path: data\n")
    with pytest.raises(HardnegError, match="cannot read the data version"):
        data_version(bad)


def test_data_version_env_only_replaces_the_implicit_lookup(tmp_path, monkeypatch):
    """Pipeline pods have no repo: HARDNEG_DATA_VERSION stands in for data.dvc, but a named file still wins."""
    f = tmp_path / "data.dvc"
    f.write_text(DVC.format(md5="33333333333333333333333333333333.dir"))
    monkeypatch.setenv("HARDNEG_DATA_VERSION", "44444444444444444444444444444444.dir")
    monkeypatch.chdir(tmp_path)
    assert data_version() == "44444444444444444444444444444444.dir"
    assert data_version(f) == "33333333333333333333333333333333.dir"


# ------------------------------------------------------------------------------------------------------ params hash


def test_params_hash_changes_when_params_change():
    p = load_params(REPO / "params.yaml")
    h = params_hash(p)
    assert re.fullmatch(r"[0-9a-f]{16}", h)
    assert params_hash(copy.deepcopy(p)) == h  # deterministic
    q = copy.deepcopy(p)
    q["mine"]["num_negatives"] += 1
    assert params_hash(q) != h
    q = copy.deepcopy(p)
    q["train"]["bi_encoder"]["lr"] = q["train"]["bi_encoder"]["lr"] * 2  # nested keys count too
    assert params_hash(q) != h


def test_params_hash_is_order_independent_and_section_scoped():
    a = {"mine": {"top_k": 100, "policy": "hybrid"}, "train": {"lr": 1e-4}}
    b = {"train": {"lr": 1e-4}, "mine": {"policy": "hybrid", "top_k": 100}}
    assert params_hash(a) == params_hash(b)
    c = copy.deepcopy(a)
    c["train"]["lr"] = 2e-4
    assert params_hash(c, ["mine"]) == params_hash(a, ["mine"])  # train is not a section mine reads
    assert params_hash(c, ["train"]) != params_hash(a, ["train"])
    assert params_hash(a, ["mine", "train"]) == params_hash(a, ["train", "mine"])


def test_current_lineage_uses_params_hash(tmp_path):
    dvc = tmp_path / "data.dvc"
    dvc.write_text(DVC.format(md5="22222222222222222222222222222222.dir"))
    params = {"mine": {"top_k": 5}}
    lin = current_lineage(params, dvc)
    assert lin.data_version == "22222222222222222222222222222222.dir"
    assert lin.params_hash == params_hash(params)
    assert current_lineage(None, dvc).params_hash == "none"


# -------------------------------------------------------------------------------------------------------- round trip


def test_lineage_round_trip(tmp_path):
    lin = Lineage(
        data_version="c0c0f55923ff16f37dc14e52410c3b04.dir",
        git_commit="abc123-dirty",
        params_hash="0123456789abcdef",
        inputs={"negatives_sha256": "f" * 64},
        extra={"metrics": {"ndcg@10": 0.71, "per_split": {"dev": 0.7}}},
    )
    path = write_lineage(tmp_path / "artifact", lin)
    assert path == tmp_path / "artifact" / LINEAGE_FILE
    assert read_lineage(tmp_path / "artifact") == lin
    assert Lineage.from_dict(json.loads(path.read_text())) == lin
    assert Lineage.from_dict(lin.to_dict()) == lin
    # optional keys default to empty
    assert Lineage.from_dict({"data_version": "d", "git_commit": "g", "params_hash": "p"}) == Lineage(
        "d", "g", "p"
    )


def test_lineage_derive_adds_inputs_without_mutating(tmp_path):
    base = Lineage("d", "g", "p", {"a": "1"}, {"metrics": {"x": 1}})
    child = base.derive(b="2")
    assert child.inputs == {"a": "1", "b": "2"} and base.inputs == {"a": "1"}
    child.extra["metrics"] = {"x": 2}
    assert base.extra == {"metrics": {"x": 1}}


def test_read_lineage_requires_the_file(tmp_path):
    with pytest.raises(HardnegError, match="not a hardneg artifact"):
        read_lineage(tmp_path)


def test_sha256_dir_is_content_and_name_sensitive(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("alpha")
    (d / "sub" / "b.txt").write_text("beta")
    h = sha256_dir(d)
    assert sha256_dir(d) == h
    (d / "sub" / "b.txt").write_text("beta!")
    assert sha256_dir(d) != h
    (d / "sub" / "b.txt").write_text("beta")
    assert sha256_dir(d) == h
    (d / "a.txt").rename(d / "c.txt")
    assert sha256_dir(d) != h
    assert sha256_file(d / "c.txt") == "8ed3f6ad685b959ead7022518e1af76cd816f8e8ec7ccdda1ed4018e8f2223f8"


# -------------------------------------------------------------------------------------------------------- git commit


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_commit_in_a_tmp_repo(tmp_path, monkeypatch):
    monkeypatch.delenv("HARDNEG_GIT_COMMIT", raising=False)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f.txt").write_text("one")
    _git(repo, "add", "f.txt")
    _git(repo, "commit", "-q", "-m", "first")
    sha = _git(repo, "rev-parse", "HEAD")
    assert git_commit(repo) == sha and re.fullmatch(r"[0-9a-f]{40}", sha)
    (repo / "untracked.txt").write_text("ignored")  # untracked files do not make it dirty
    assert git_commit(repo) == sha
    (repo / "f.txt").write_text("two")
    assert git_commit(repo) == sha + "-dirty"
    _git(repo, "commit", "-q", "-am", "second")
    sha2 = _git(repo, "rev-parse", "HEAD")
    assert sha2 != sha and git_commit(repo) == sha2
    # a benchmark's own outputs, rewritten while it runs, do not make its stamp dirty; anything else still does
    (repo / "results").mkdir()
    (repo / "results" / "r.json").write_text("{}")
    _git(repo, "add", "results/r.json")
    _git(repo, "commit", "-q", "-m", "third")
    sha3 = _git(repo, "rev-parse", "HEAD")
    (repo / "results" / "r.json").write_text('{"runs": 1}')
    assert git_commit(repo) == sha3 + "-dirty" and git_commit(repo, ignore=("results",)) == sha3
    (repo / "f.txt").write_text("three")
    assert git_commit(repo, ignore=("results",)) == sha3 + "-dirty"


def test_git_commit_env_override_and_outside_git(tmp_path, monkeypatch):
    monkeypatch.setenv("HARDNEG_GIT_COMMIT", "from-image-build")
    assert git_commit(tmp_path) == "from-image-build"
    monkeypatch.delenv("HARDNEG_GIT_COMMIT")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    (tmp_path / "plain").mkdir()
    assert git_commit(tmp_path / "plain") == "unknown"
