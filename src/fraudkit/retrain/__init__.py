"""Live retraining: the detector-side extension (extension), the worker process (worker) and the label
buffer it trains from (buffer)."""
