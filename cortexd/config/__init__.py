"""cortex.yaml: every Cortex dialect read into one configuration, with located errors."""
from __future__ import annotations

from cortexd.config.errors import ConfigError, ConfigIssue
from cortexd.config.loader import ValidationReport, load_config, load_config_text, validate_path, validate_report
from cortexd.config.objects import (
    Api,
    Autoscaling,
    Batching,
    Compute,
    Config,
    PredictorSpec,
    Tracker,
    TrafficSplit,
    TrafficSplitter,
    UpdateStrategy,
)
from cortexd.config.quantities import parse_cpu, parse_mem
from cortexd.config.schema import RESERVED_PATHS, reference_yaml

__all__ = [
    "RESERVED_PATHS",
    "Api",
    "Autoscaling",
    "Batching",
    "Compute",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "PredictorSpec",
    "Tracker",
    "TrafficSplit",
    "TrafficSplitter",
    "UpdateStrategy",
    "ValidationReport",
    "load_config",
    "load_config_text",
    "parse_cpu",
    "parse_mem",
    "reference_yaml",
    "validate_path",
    "validate_report",
]
