"""The topic ACL of both brokers, as data with Mosquitto's `%u` semantics, and its pure checks.

The rules are the ones `stack.mosquitto_config.mosquitto_acl()` writes for Mosquitto: every user
gets the `pattern` rules with `%u` replaced by its username (the restaurant id); the platform
user also gets its `topic` rules. `read` covers subscribing and receiving, `write` publishing.
"""

from dataclasses import dataclass
from typing import Literal

from core.ids import is_valid_id

Access = Literal["read", "write"]

SHARED_PREFIX = "$share/"


@dataclass(frozen=True, slots=True)
class Rule:
    access: Access
    pattern: str


# Mosquitto `pattern` lines: they apply to every user, the platform one included.
PATTERN_RULES = (
    Rule("write", "restaurants/%u/devices/+/presence"),
    Rule("write", "restaurants/%u/devices/+/heartbeat"),
    Rule("read", "restaurants/%u/status"),
)
# Mosquitto `topic` lines under `user <platform>`.
PLATFORM_RULES = (
    Rule("read", "restaurants/#"),
    Rule("write", "restaurants/+/status"),
)


def topic_matches(topic: str, topic_filter: str) -> bool:
    """MQTT matching of a concrete topic against a filter (`+` one level, `#` the rest or none)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # [MQTT-4.7.2-1]
    levels = topic.split("/")
    filter_levels = topic_filter.split("/")
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1
        if index >= len(levels) or level not in ("+", levels[index]):
            return False
    return len(levels) == len(filter_levels)


def filter_within(topic_filter: str, allowed: str) -> bool:
    """True when every topic `topic_filter` can match is also matched by `allowed`."""
    levels = topic_filter.split("/")
    allowed_levels = allowed.split("/")
    for index, level in enumerate(allowed_levels):
        if level == "#":
            return True
        if index >= len(levels) or levels[index] == "#":
            return False
        if level != "+" and level != levels[index]:
            return False  # a literal only covers the same literal, never a wildcard
    return len(levels) == len(allowed_levels)


def strip_shared(topic_filter: str) -> str | None:
    """`$share/<group>/<filter>` → `<filter>`; a plain filter is returned as is; malformed → None."""
    if not topic_filter.startswith(SHARED_PREFIX):
        return topic_filter
    _prefix, _sep, rest = topic_filter.partition("/")
    group, sep, inner = rest.partition("/")
    if not group or not sep or not inner or "+" in group or "#" in group:
        return None
    return inner


class TopicAcl:
    """The rules above for one platform username; every check is pure and cheap."""

    def __init__(self, platform_user: str) -> None:
        self.platform_user = platform_user

    def rules_for(self, username: str | None) -> list[Rule]:
        # Mosquitto refuses `%u` substitution for usernames with wildcards or slashes; a username that
        # is not a valid id never gets pattern rules here, so it cannot widen a pattern either.
        if not username:
            return []
        rules: list[Rule] = []
        if is_valid_id(username):
            rules.extend(Rule(r.access, r.pattern.replace("%u", username)) for r in PATTERN_RULES)
        if username == self.platform_user:
            rules.extend(PLATFORM_RULES)
        return rules

    def may_publish(self, username: str | None, topic: str) -> bool:
        return any(r.access == "write" and topic_matches(topic, r.pattern) for r in self.rules_for(username))

    def may_receive(self, username: str | None, topic: str) -> bool:
        return any(r.access == "read" and topic_matches(topic, r.pattern) for r in self.rules_for(username))

    def may_subscribe(self, username: str | None, topic_filter: str) -> bool:
        """Only filters wholly inside what the user may read (see `broker` for why not wider)."""
        inner = strip_shared(topic_filter)
        if inner is None:
            return False
        return any(r.access == "read" and filter_within(inner, r.pattern) for r in self.rules_for(username))


def mosquitto_acl_lines(platform_user: str) -> list[str]:
    """The rules in Mosquitto's ACL syntax, to check that both brokers enforce the same contract."""
    lines = [f"pattern {r.access} {r.pattern}" for r in PATTERN_RULES]
    lines.append(f"user {platform_user}")
    lines.extend(f"topic {r.access} {r.pattern}" for r in PLATFORM_RULES)
    return lines
