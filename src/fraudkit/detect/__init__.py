"""The detector: consumer-group batches → features → model (and rules) → branches and verdicts.

Stages, one module each: `settings` (options, the settings resolved once, the summary), `holder`
(the serving model and its feature state), `hooks` (extension points), `scoring` (a batch →
verdicts), `outputs` (routing and dead letters), `commit` (at-least-once and exactly-once
committers), `labels` (the label feed), `loop` (the loop that calls them), `run` (`run_detect`),
`codec` (decoding fast path, verdict encoding) and `status` (panel, log line, live quality).
"""

from fraudkit.detect.holder import ModelHolder, Scorer
from fraudkit.detect.hooks import DetectContext, DetectExtension
from fraudkit.detect.run import default_instance_id, load_holder, run_detect, stream_spec, wait_for_kafka
from fraudkit.detect.settings import DetectOptions, DetectSettings, DetectSummary

__all__ = [
    "DetectContext",
    "DetectExtension",
    "DetectOptions",
    "DetectSettings",
    "DetectSummary",
    "ModelHolder",
    "Scorer",
    "default_instance_id",
    "load_holder",
    "run_detect",
    "stream_spec",
    "wait_for_kafka",
]
