"""Faults, for real: the CLI in subprocesses on the tiny fixture, SIGKILLed early and late, starved of disk
(RLIMIT_FSIZE), run twice at once on one folder (benchmarks/faults.py runs the full stage matrix); plus the
checksum refusal of a corrupt stage output and the one JSONL error handling."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import faults as F
from hardneg.artifacts import CHECKSUMS_FILE, atomic_write_json, staged_output, verify_checksums
from hardneg.errors import ArtifactError, DataFormatError

pytestmark = pytest.mark.e2e

FAST_STAGES = ("embed", "reduce", "retrieve", "mine")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir):
    """A tiny project with two uninterrupted (identical) runs of embed, reduce, retrieve and mine."""
    work = tmp_path_factory.mktemp("faults")
    root = F.make_project(work / "reference", tiny_model_dir)
    return work, root, F.reference(root, list(FAST_STAGES), repeats=1)  # determinism: the benchmark's 2 runs


# every fault and every fast stage at least once (the whole stage x fault matrix: benchmarks/faults.py)
CASES = [
    ("embed", "sigkill-late"),
    ("embed", "disk-full"),
    ("reduce", "sigkill-early"),
    ("reduce", "concurrent-twin"),
    ("mine", "sigkill-late"),
    ("mine", "disk-full"),
]


@pytest.mark.parametrize("stage, fault", CASES)
def test_stage_survives_fault(reference, stage, fault):
    # killed: a rerun finishes with the outputs of an uninterrupted run; disk full: a clean one-line error, the
    # previous output intact; twins: both finish, the folder verifies and holds the same outputs
    work, root, ref = reference
    row = F.run_case(root, work, stage, fault, ref[stage])
    assert row["outcome"] == ("refused" if fault == "disk-full" else "finished"), row
    if fault == "disk-full":
        assert "no space left" in row["detail"] and "hardneg " + stage in row["detail"], row
    elif fault.startswith("sigkill"):  # never a half-written folder: the previous one or the complete new one
        assert "absent or intact" in row["detail"], row


def test_corrupt_stage_output_is_refused_naming_the_file_and_the_command(reference, tmp_path):
    import shutil

    _, root, _ = reference
    proj = tmp_path / "p"
    shutil.copytree(root, proj)
    corpus = proj / "red" / "corpus.npy"
    data = bytearray(corpus.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit of a vector: np.load would accept it
    corpus.write_bytes(bytes(data))
    rc, log, _ = F.run(F.STAGES["mine"], proj)
    msg = " ".join(log.split())
    assert rc == 1 and "Traceback" not in log
    assert "corpus.npy is corrupt" in msg and "rerun `hardneg reduce`" in msg, msg


def test_checksums_refuse_a_modified_or_missing_file(tmp_path):
    out = tmp_path / "stage"
    with staged_output(out, "hardneg demo") as d:
        atomic_write_json(d / "a.json", {"x": 1})
        np.save(d / "v.npy", np.zeros(3, np.float32))
    assert (out / CHECKSUMS_FILE).read_text().count("\n") == 2
    verify_checksums(out, "hardneg demo")
    (out / "a.json").write_text('{"x": 2}\n')
    with pytest.raises(ArtifactError, match=r"a\.json is corrupt.*rerun `hardneg demo`"):
        verify_checksums(out, "hardneg demo")
    (out / "a.json").unlink()
    with pytest.raises(ArtifactError, match=r"a\.json is missing"):
        verify_checksums(out, "hardneg demo")


def test_a_failed_stage_leaves_the_previous_output(tmp_path):
    out = tmp_path / "stage"
    with staged_output(out, "hardneg demo") as d:
        (d / "f.txt").write_text("old")
    with pytest.raises(RuntimeError), staged_output(out, "hardneg demo") as d:
        (d / "f.txt").write_text("new")
        raise RuntimeError("boom")
    assert (out / "f.txt").read_text() == "old"
    assert not list(tmp_path.glob(".stage.partial-*"))
    verify_checksums(out, "hardneg demo")


def test_both_negatives_readers_share_one_error_handling(tmp_path):
    from hardneg.mine import read_negatives
    from hardneg.train import load_negatives

    p = tmp_path / "negatives.jsonl"
    p.write_text(json.dumps({"query_id": "q", "positive_id": "d", "negative_ids": []}) + "\n{not json\n")
    for reader in (read_negatives, load_negatives):
        with pytest.raises(DataFormatError, match=r"negatives\.jsonl:2: invalid JSON"):
            reader(tmp_path)
