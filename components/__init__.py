"""Thin KFP v2 components, one per stage; each body imports and calls ``hardneg.stages``.

They are lightweight Python components (KFP's local SubprocessRunner runs nothing else) with
``install_kfp_package=False`` and no ``packages_to_install``: every dependency, kfp included, is baked into the
project image (``Dockerfile``), so they run offline and start in ~0.1 s locally.
"""

import os

# The project image, built from ./Dockerfile and tagged by version ('python' in the name keeps KFP's local runner quiet).
IMAGE = os.environ.get("HARDNEG_IMAGE", "ghcr.io/hardneg/hardneg-python:0.1.0")
