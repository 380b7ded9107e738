"""cortexd: serve cortex.yaml APIs on one NVIDIA machine."""

__version__ = "0.1.0"
