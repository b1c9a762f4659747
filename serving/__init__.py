"""KServe model server for the exported hardneg reranker (torch-free: onnxruntime + tokenizers).

``python -m serving --model_dir DIR --http_port N`` (container entry point) or ``hardneg serve``; see README.md.
Modules import kserve with a clean ``sys.argv`` (kserve parses it at import time).
"""

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def clean_argv() -> Iterator[None]:
    """Import kserve inside this: it parses ``sys.argv`` at import time (docs/stack.md 2.4) and would reject our flags."""
    argv = sys.argv
    sys.argv = argv[:1]
    try:
        yield
    finally:
        sys.argv = argv
