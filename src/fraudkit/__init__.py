"""fraudkit: real-time payment-fraud detection on Kafka.

The public API, importable from here (loaded on first use, so `import fraudkit` stays instant):

    from fraudkit import load_config, simulate_dataset, run_generate, run_detect, run_sink
    from fraudkit import FeatureSpec, OnlineFeatures, Registry, FraudkitError
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    "FraudkitConfig": "fraudkit.config",
    "load_config": "fraudkit.config",
    "FraudkitError": "fraudkit.errors",
    "ConfigError": "fraudkit.errors",
    "BrokerError": "fraudkit.errors",
    "ModelError": "fraudkit.errors",
    "DataError": "fraudkit.errors",
    "DatabaseError": "fraudkit.errors",
    "Transaction": "fraudkit.schema",
    "Label": "fraudkit.schema",
    "simulate_dataset": "fraudkit.data.simulate",
    "load_mapping": "fraudkit.data.datasets",
    "FeatureSpec": "fraudkit.features",
    "OnlineFeatures": "fraudkit.features",
    "spark_features": "fraudkit.features",
    "LoadedModel": "fraudkit.model.network",
    "Registry": "fraudkit.model.registry",
    "run_generate": "fraudkit.generate",
    "run_detect": "fraudkit.detect",
    "DetectExtension": "fraudkit.detect",
    "DetectSummary": "fraudkit.detect",
    "ModelHolder": "fraudkit.detect",
    "run_sink": "fraudkit.storage.sink",
    "RuleSet": "fraudkit.rules.language",
    "running_broker": "fraudkit.stream.broker",
}

__all__ = [
    "BrokerError",
    "ConfigError",
    "DataError",
    "DatabaseError",
    "DetectExtension",
    "DetectSummary",
    "FeatureSpec",
    "FraudkitConfig",
    "FraudkitError",
    "Label",
    "LoadedModel",
    "ModelError",
    "ModelHolder",
    "OnlineFeatures",
    "Registry",
    "RuleSet",
    "Transaction",
    "__version__",
    "load_config",
    "load_mapping",
    "run_detect",
    "run_generate",
    "run_sink",
    "running_broker",
    "simulate_dataset",
    "spark_features",
]

if TYPE_CHECKING:
    from fraudkit.config import FraudkitConfig, load_config
    from fraudkit.data.datasets import load_mapping
    from fraudkit.data.simulate import simulate_dataset
    from fraudkit.detect import DetectExtension, DetectSummary, ModelHolder, run_detect
    from fraudkit.errors import BrokerError, ConfigError, DatabaseError, DataError, FraudkitError, ModelError
    from fraudkit.features import FeatureSpec, OnlineFeatures, spark_features
    from fraudkit.generate import run_generate
    from fraudkit.model.network import LoadedModel
    from fraudkit.model.registry import Registry
    from fraudkit.rules.language import RuleSet
    from fraudkit.schema import Label, Transaction
    from fraudkit.storage.sink import run_sink
    from fraudkit.stream.broker import running_broker


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fraudkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
