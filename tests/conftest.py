"""Shared test fixtures: the tiny BEIR fixture corpus and a tiny 2-layer BERT built in the test run.

The tiny model is built once per session (WordPiece trained on the fixture corpus, random 2-layer BERT) and saved
as a plain HF folder: ``SentenceTransformer(dir)`` loads it with mean pooling and ``CrossEncoder(dir, num_labels=1)``
loads it with a fresh head. Tests that modify a model must copy the folder first (``copy_model`` fixture).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `import kserve` parses sys.argv at import time (docs/stack.md 2.4): import it here with a clean argv, once.
_argv = sys.argv
sys.argv = sys.argv[:1]
try:
    import kserve  # noqa: F401
except ImportError:
    pass
finally:
    sys.argv = _argv

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"


KUBECTL_MISSING = (
    "kubectl not found on PATH: the k8s/release tests render the kustomize overlays with `kubectl kustomize`. "
    "Install the kubectl client (https://kubernetes.io/docs/tasks/tools/, e.g. `curl -LO "
    "https://dl.k8s.io/release/v1.31.0/bin/linux/amd64/kubectl && sudo install kubectl /usr/local/bin/`). "
    "Under CI=true a missing kubectl fails these tests instead of skipping them"
)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_kubectl() -> str:
    """kubectl's path; otherwise skip with the install hint (reported by -ra), or fail under CI=true."""
    path = shutil.which("kubectl")
    if path:
        return path
    if in_ci():
        pytest.fail(KUBECTL_MISSING, pytrace=False)
    pytest.skip(KUBECTL_MISSING)


@pytest.fixture(autouse=True)
def _kubectl_marker(request):
    """Tests marked ``@pytest.mark.kubectl`` need the kubectl client (see require_kubectl)."""
    if request.node.get_closest_marker("kubectl") is not None:
        require_kubectl()


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "kubectl not found" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_sep(
            "!",
            f"{len(skipped)} test(s) SKIPPED: kubectl is not installed (see the skip reason above)",
            red=True,
        )


@pytest.fixture(autouse=True)
def _builtin_print_kept():
    """Tests that drive KFP's local runner directly can leave its (thread-unsafe) indenting ``print`` behind; put
    the real one back so no later test reads indented lines (pipelines.run.run_local does the same for users)."""
    import builtins

    saved = builtins.print
    yield
    builtins.print = saved


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def tiny_data_dir() -> Path:
    """Read-only path of the tiny BEIR fixture (copy it before corrupting it)."""
    return FIXTURES / "tiny"


@pytest.fixture()
def tiny_data_copy(tmp_path, tiny_data_dir) -> Path:
    dst = tmp_path / "tiny"
    shutil.copytree(tiny_data_dir, dst)
    return dst


def _wordpiece_vocab(lines: list[str], size: int) -> list[str]:
    """A deterministic WordPiece vocab: specials, every character (alone and as ``##`` continuation), then the most
    frequent whole words (ties by spelling). The tokenizers trainer is not reproducible across processes (its merge
    ties depend on hash order), which made tiny-model tests flaky, so the vocab is counted here instead."""
    from collections import Counter

    from tokenizers.normalizers import BertNormalizer
    from tokenizers.pre_tokenizers import BertPreTokenizer

    norm, pre = BertNormalizer(lowercase=True), BertPreTokenizer()
    words: Counter[str] = Counter()
    for line in lines:
        words.update(w for w, _ in pre.pre_tokenize_str(norm.normalize_str(line)))
    chars = sorted({c for w in words for c in w})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    seen = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= size:
            break
        if w not in seen:
            vocab.append(w)
            seen.add(w)
    return vocab


def _build_tiny_bert(out: Path, corpus_dir: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from hardneg.data import iter_corpus, iter_queries

    lines = [d.full_text for d in iter_corpus(corpus_dir / "corpus.jsonl")]
    lines += [q.text for q in iter_queries(corpus_dir / "queries.jsonl")]
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(_wordpiece_vocab(lines, 600)) + "\n", encoding="utf-8")
    tok = BertTokenizerFast(
        vocab=str(out / "vocab.txt"), model_max_length=128
    )  # vocab=, not vocab_file= (docs/stack.md 3.2)
    cfg = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        num_labels=1,
    )
    torch.manual_seed(0)
    BertModel(cfg).eval().save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_data_dir) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocab trained on the fixture corpus (read-only: copy to modify)."""
    return _build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model", tiny_data_dir)


@pytest.fixture()
def copy_model(tmp_path, tiny_model_dir):
    def _copy(name: str = "model") -> Path:
        dst = tmp_path / name
        shutil.copytree(tiny_model_dir, dst)
        return dst

    return _copy


@pytest.fixture()
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, 2 threads are several times slower for tiny models."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
