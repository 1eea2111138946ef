"""Durable detector state: card state changelogged per partition and restored on assignment,
terminal-label snapshots, and the replay guard that keeps re-processed rows out of the windows."""

from fraudkit.state.codec import CardRecord, InvalidStateRecord, decode_card, encode_card, spec_fingerprint

__all__ = ["CardRecord", "InvalidStateRecord", "decode_card", "encode_card", "spec_fingerprint"]
