"""Fraud rules: pure Python, no Kafka.

- ``conditions``, ``definitions``: rules as data, validated;
- ``windows``: per-key event-time windows, the state of stateful rules;
- ``engine``: decides a payment with a rule set and explains the decision.
"""

from ..errors import RuleError
from .definitions import MODES, ORIGINAL, RULESETS_DIR, Rule, RuleSet, load_ruleset, parse_rule, parse_ruleset
from .engine import Decision, Engine, FiredRule
from .windows import ALLOWED_LATENESS_MS, MAX_KEYS, WindowState

__all__ = [
    "ALLOWED_LATENESS_MS", "MAX_KEYS", "MODES", "ORIGINAL", "RULESETS_DIR", "Decision", "Engine", "FiredRule", "Rule",
    "RuleError", "RuleSet", "WindowState", "load_ruleset", "parse_rule", "parse_ruleset",
]
