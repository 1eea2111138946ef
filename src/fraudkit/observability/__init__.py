"""Running fraudkit in production: Prometheus metrics, health probes, structured logs, drift alarms.

* `server`: one small HTTP server per process for /metrics, /healthz and /readyz (`metrics.port`).
* `health`: liveness (the loop turns) and readiness (named conditions) behind the probes.
* `prometheus`: metric families of `detect`, `generate` and `sink` (names in docs/operations.md).
* `logs`: the one log writer of the long-running commands: text lines or JSON objects.
* `drift`: training distributions for the manifest and PSI over a sliding window of live rows.

prometheus_client is imported only here, so the rest of fraudkit starts without it.
"""
