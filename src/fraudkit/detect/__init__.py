"""The detector: the loop and its stages (loop), message decoding and verdict encoding (codec), and the
status panel and summary (status)."""
