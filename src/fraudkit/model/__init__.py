"""Models: the network and its loading (network), the versioned registry (registry), training (train),
evaluation (evaluate) and the metrics both use (metrics)."""
