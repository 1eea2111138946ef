"""fraudkit: real-time payment-fraud detection on Kafka."""

__version__ = "0.1.0"
