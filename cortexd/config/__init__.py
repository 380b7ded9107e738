"""cortex.yaml: schema, validation with located errors, and the validated configuration."""
from __future__ import annotations

from cortexd.config.errors import ConfigError, ConfigIssue
from cortexd.config.loader import load_config, load_config_text, validate_path
from cortexd.config.objects import Api, Batching, Compute, Config, PredictorSpec, Tracker
from cortexd.config.quantities import parse_cpu, parse_mem
from cortexd.config.schema import RESERVED_PATHS, reference_yaml

__all__ = [
    "RESERVED_PATHS",
    "Api",
    "Batching",
    "Compute",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "PredictorSpec",
    "Tracker",
    "load_config",
    "load_config_text",
    "parse_cpu",
    "parse_mem",
    "reference_yaml",
    "validate_path",
]
