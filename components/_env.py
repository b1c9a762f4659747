"""Shared decorator settings for all components (imported at definition time only; not shipped to pods)."""

from functools import partial

from kfp import dsl

from components import IMAGE

component = partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
