"""Kafka plumbing: the only confluent_kafka importer (kafka), local brokers (broker), pacing (ratelimit), the
stream clock that expires state (clock)."""
