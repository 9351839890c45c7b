"""The rules a config value is checked against: each takes a value and says what is wrong with it.

src/config.py walks the composed config with them; src/families.py states each model
family's keys with them.
"""

import math
import re
from collections.abc import Callable
from typing import Any

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it, or None

# Upper bounds: past them a value can only exhaust memory, time or a C integer (a seed of 2**32,
# a width of 10**9, epochs of 10**20 ended in tracebacks or hung before these limits).
MAX_SEED = 2**32 - 1          # NumPy's seeds
MAX_EPOCHS = 100_000
MAX_BATCH = 2**20
MAX_PIXELS = 1_024            # data.resize, per side


def integer(low: int | None = None, high: int | None = None) -> Rule:
    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
            bounds = (f" >= {low}" if low is not None else "") + (f" and <= {high:,}" if high else "")
            return f"must be an integer{bounds}"
        if high is not None and value > high:
            return f"must be at most {high:,} (a bigger value would only exhaust memory or time)"
    return rule


def number(low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False) -> Rule:
    interval = (f"{'(' if low_open or low is None else '['}{'-inf' if low is None else low}, "
                f"{'inf' if high is None else high}{')' if high_open or high is None else ']'}")

    def rule(value):
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return f"must be a finite number in {interval}"
        below = low is not None and (value <= low if low_open else value < low)
        above = high is not None and (value >= high if high_open else value > high)
        if below or above:
            return f"must be in {interval}"
    return rule


def boolean(value) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def choice(*options: str) -> Rule:
    def rule(value):
        return None if value in options else f"must be one of {', '.join(options)}"
    return rule


def optional(rule: Rule) -> Rule:
    return lambda value: None if value is None else rule(value)


def text(value) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def safe_name(value) -> str | None:
    # Used in directory names and MLflow experiment names: no separators, no traversal.
    ok = isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}", value)
    return None if ok else ("must be text of letters, digits, '_', '-' or '.' (not only digits), "
                            "starting with a letter or digit")


def int_list(length: int | None = None, low: int = 1, high: int | None = None) -> Rule:
    def rule(value):
        if not isinstance(value, list) or not all(integer(low, high)(item) is None for item in value):
            return f"must be a list of integers >= {low}" + (f" and <= {high:,}" if high else "")
        if length is not None and len(value) != length:
            return f"must have {length} items"
    return rule
