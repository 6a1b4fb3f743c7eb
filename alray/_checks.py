"""Checkers for job-spec values: each takes ``(value, where)`` and returns the normalized value
or raises :class:`~alray.errors.ConfigError` naming the key, the value given and what is allowed.
"""

from __future__ import annotations

from typing import Any, Callable

from alray.errors import ConfigError

Checker = Callable[[Any, str], Any]


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, f"got {describe(value)}; expected a non-empty string")
    return value


def int_at_least(minimum: int) -> Checker:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(where, f"got {describe(value)}; expected an integer >= {minimum}")
        return value

    return check


def int_between(minimum: int, maximum: int) -> Checker:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise ConfigError(where, f"got {describe(value)}; expected an integer from {minimum} "
                                     f"to {maximum}")
        return value

    return check


def one_of(*allowed: Any) -> Checker:
    def check(value: Any, where: str) -> Any:
        if isinstance(value, (bool, float)) or value not in allowed:
            choices = " | ".join(str(a) for a in allowed)
            raise ConfigError(where, f"got {describe(value)}; expected one of {choices}")
        return value

    return check


def string_list(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise ConfigError(where, f"got {describe(value)}; expected a string or a list of strings")
    return tuple(items)


def share_or_count(value: Any, where: str) -> float | int:
    """A share in [0, 1) given as a float, or a count >= 0 given as an integer."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(where, f"got {describe(value)}; expected a share in [0, 1) or a count")
    if isinstance(value, float) and not 0.0 <= value < 1.0:
        raise ConfigError(where, f"got {value!r}; a share must be in [0, 1), a count an integer")
    if value < 0:
        raise ConfigError(where, f"got {value!r}; expected a share in [0, 1) or a count >= 0")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"got {describe(value)}; expected true or false")
    return value


def actors(value: Any, where: str) -> int | None:
    return None if value is None else int_at_least(1)(value, where)


def gpus(value: Any, where: str) -> str | int:
    return one_of("auto", 0, 1)(value, where)


def float_list(value: Any, where: str) -> tuple[float, ...]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        raise ConfigError(where, f"got {describe(value)}; expected a number or a list of numbers")
    return tuple(float(v) for v in items)


def share(value: Any, where: str) -> float:
    """A share in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(where, f"got {describe(value)}; expected a share in [0, 1]")
    return float(value)


def positive_number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(where, f"got {describe(value)}; expected a number > 0")
    return float(value)


def index_or_name(value: Any, where: str) -> int | str:
    """A class given by its index (an integer >= 0) or its name (a string)."""
    if isinstance(value, str) and value:
        return value
    return int_at_least(0)(value, where)


def strategy(names: tuple[str, ...]) -> Checker:
    """A registered score name, or a user's own score as ``package.module:function``."""
    def check(value: Any, where: str) -> str:
        if isinstance(value, str) and value.count(":") == 1 and all(value.split(":")):
            return value
        if isinstance(value, str) and value in names:
            return value
        raise ConfigError(where, f"got {describe(value)}; expected one of {' | '.join(names)}, "
                                 "or your own score as package.module:function")

    return check
