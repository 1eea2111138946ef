"""The FraudkitError tree; each class carries the process exit code the CLI uses."""

from __future__ import annotations


class FraudkitError(Exception):
    """Base of every error fraudkit reports to the user as one clear line."""

    exit_code = 1


class ConfigError(FraudkitError):
    """Bad configuration or command-line usage."""

    exit_code = 2


class BrokerError(FraudkitError):
    """Kafka cannot be reached or refused an operation, or a local broker (Apache Kafka or Tansu) failed.

    `reason` is the cause without fraudkit's wording around it (librdkafka's text where there is
    one), for callers that report it in their own message; it defaults to the message.
    """

    exit_code = 3

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = message if reason is None else reason


class ModelError(FraudkitError):
    """A model artifact or the registry is missing, corrupt or tampered with."""

    exit_code = 4


class DataError(FraudkitError):
    """Input data is missing, malformed or inconsistent."""

    exit_code = 5


class DatabaseError(FraudkitError):
    """The SQL database cannot be reached or refused a write."""

    exit_code = 6


class IncompleteRun(FraudkitError):
    """A run finished but did not keep up: transactions left without a verdict, or the detector fell behind."""

    exit_code = 7
