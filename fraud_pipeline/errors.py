"""The app's errors: one root, PipelineError, and its kinds.

    PipelineError           a failure that stops the process: at a script's edge, one line and exit 1
      ConfigError           settings that cannot work (environment, flags): ``error: MESSAGE`` and exit 1
        SecurityConfigError   a TLS or SASL setting (client config file, environment, flags)
      RuleError             a rule or rule set that cannot be used (also a ValueError)

Kafka's failures have their own root, clients.ClientError, in the client
seam, which imports nothing of the app. Two errors stay outside this root on
purpose: stage.BatchError (a batch to roll back and read again, handled inside
the loop) and payment.InvalidPayment (a record to dead-letter): neither stops
the process.

This module imports nothing, so every module can raise these.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A failure that stops the process with a non-zero exit (never a silent loss)."""


class ConfigError(PipelineError):
    """Settings that cannot work: an environment value, a flag; a script says ``error: MESSAGE`` and exits 1 (runtime.cli_main)."""


class SecurityConfigError(ConfigError, ValueError):
    """A client security setting that cannot work, named with where it came from."""


class RuleError(PipelineError, ValueError):
    """A rule or rule set that cannot be used; the message names the rule and the field at fault."""

    def __init__(self, path: str, message: str, rule_id: str | None = None) -> None:
        self.path = path
        """Where in the rule the fault is, e.g. ``condition.op``; empty for the rule as a whole."""
        self.message = message
        """What is wrong there."""
        self.rule_id = rule_id
        """The rule's id, once known."""
        where = f"rule {rule_id!r}: " if rule_id else ""
        super().__init__(f"{where}{path}: {message}" if path else f"{where}{message}")

    def in_rule(self, rule_id: str) -> RuleError:
        """The same error, naming the rule it was found in."""
        return RuleError(self.path, self.message, rule_id)
