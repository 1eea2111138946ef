"""Features: the specification (spec), defined once and computed online (online) and in Spark (spark).

`frames` runs the online implementation over pandas frames; the Spark/online parity test holds
the two implementations to the same values on every row.
"""

from fraudkit.features.frames import frame_to_labels, frame_to_transactions, pandas_features
from fraudkit.features.online import OnlineFeatures, walk_source
from fraudkit.features.spark import spark_features
from fraudkit.features.spec import (
    DAY_MS,
    HOUR_MS,
    MAX_SPEED_KMH,
    SPEC_VERSION,
    DatasetFields,
    FeatureSpec,
    haversine_km,
)

__all__ = [
    "DAY_MS",
    "HOUR_MS",
    "MAX_SPEED_KMH",
    "SPEC_VERSION",
    "DatasetFields",
    "FeatureSpec",
    "OnlineFeatures",
    "frame_to_labels",
    "frame_to_transactions",
    "haversine_km",
    "pandas_features",
    "spark_features",
    "walk_source",
]
