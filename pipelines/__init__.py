"""The hardneg Kubeflow pipeline: definition (``hardneg_pipeline``), compile, local run and submit."""
