"""What a config schema is made of: a field's default and the rule its values obey, written once in the schema
of the package the setting configures; ``leukemia.config`` checks every value against its rule."""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass(frozen=True)
class Rule:
    """What a value must satisfy, beyond its type; ``requirement`` ends the one-line error."""

    holds: Callable[[Any], bool]
    requirement: str


def checked(default: Any = MISSING, rule: Rule | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A schema field with its default and the rule its values obey (a null, where the type allows one, is not
    checked)."""
    metadata = {"rule": rule} if rule else {}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


POSITIVE = Rule(lambda v: v > 0, "must be greater than 0")
NOT_NEGATIVE = Rule(lambda v: v >= 0, "must be 0 or more")
AT_LEAST_2 = Rule(lambda v: v >= 2, "must be at least 2")
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "must be between 0 and 1")
BELOW_1 = Rule(lambda v: 0 <= v < 1, "must be in [0, 1), e.g. 0.1")
FRACTION = Rule(lambda v: 0 < v < 1, "must be between 0 and 1, both excluded (e.g. 0.2)")
SEED = Rule(lambda v: 0 <= v < 2**32, "must be between 0 and 2**32 - 1")
DEGREES = Rule(lambda v: 0 <= v <= 180, "must be between 0 and 180 (degrees either way)")
TEXT = Rule(lambda v: bool(str(v).strip()), "must not be empty")
PER_CHANNEL = Rule(
    lambda v: len(v) == 3 and all(0 <= x <= 1 for x in v), "must be 3 values in [0, 1], one per channel (RGB)"
)
PER_CHANNEL_SPREAD = Rule(
    lambda v: len(v) == 3 and all(x > 0 for x in v), "must be 3 values above 0, one per channel (RGB)"
)
RUN_IDS = Rule(lambda v: all(str(x).strip() for x in v), "must list run ids, none empty")
TRACKING_URI = Rule(
    lambda v: str(v).startswith(("sqlite:///", "http://", "https://", "postgresql", "mysql", "mssql", "databricks")),
    "must be sqlite:///<file>, http(s)://<server> or a database URI (postgresql://, mysql://, mssql://)",
)
WORKERS = Rule(lambda v: v >= 0, "must be 0 (load in the main process) or more")
WEB_ADDRESS = Rule(lambda v: str(v).startswith(("http://", "https://")), "must be an http(s):// address")
