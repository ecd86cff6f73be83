"""Options of remote functions, actors and actor methods, validated in one place.

Validation happens when the decorator or ``.options()`` is called, never at dispatch:
a wrong option is a ``TypeError`` (wrong type) or ``ValueError`` (unknown name, value
out of range) naming the option, raised where the user wrote it.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Dict, Mapping, Optional

__all__ = ["TASK_OPTIONS", "ACTOR_OPTIONS", "METHOD_OPTIONS", "validate", "NUM_RETURNS_KINDS",
           "timeout_seconds"]

NUM_RETURNS_KINDS = ("dynamic", "streaming")


def _int_at_least(lo: int) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"option {name!r} must be an int, got {type(value).__name__}")
        if value < lo:
            raise ValueError(f"option {name!r} must be >= {lo}, got {value}")
        return int(value)
    return check


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    def optional(name: str, value: Any) -> Any:
        return None if value is None else check(name, value)
    return optional


def _num_returns(name: str, value: Any) -> Any:
    if isinstance(value, str):
        if value not in NUM_RETURNS_KINDS:
            raise ValueError(f"option {name!r} must be an int >= 0, 'dynamic' or 'streaming', "
                             f"got {value!r}")
        return value
    return _int_at_least(0)(name, value)


def cpu_count(label: str, value: Any) -> float:
    """A finite number >= 0 (NaN would compare false with everything: a free-CPU count
    that became NaN would never let a task run again)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{label} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{label} must be a finite number >= 0, got {value}")
    return float(value)


def _cpus(name: str, value: Any) -> float:
    return cpu_count(f"option {name!r}", value)


def timeout_seconds(timeout: Any) -> Optional[float]:
    """A ``timeout`` argument checked: None or infinite -> None (wait for ever), else a
    number of seconds >= 0; NaN and negative numbers are refused."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise TypeError(f"timeout must be a number of seconds or None, "
                        f"got {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be a number of seconds >= 0 or None, got {timeout}")
    return None if math.isinf(timeout) else timeout


def _retry_exceptions(name: str, value: Any) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple)):
        for cls in value:
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                raise TypeError(f"option {name!r} must be a bool or a list of exception classes, "
                                f"got {cls!r} in the list")
        return tuple(value)
    raise TypeError(f"option {name!r} must be a bool or a list of exception classes, "
                    f"got {type(value).__name__}")


def _name(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"option {name!r} must be a str, got {type(value).__name__}")
    return value


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"option {name!r} must be a bool, got {type(value).__name__}")
    return value


def _resources(name: str, value: Any) -> Any:
    """Custom resources a task or actor needs, {name: amount} (on a Ray cluster: the
    resources its nodes declare; the local runtime has none)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TypeError(f"option {name!r} must be a dict of resource names to amounts, "
                        f"got {type(value).__name__}")
    out = {}
    for key, amount in value.items():
        if not isinstance(key, str):
            raise TypeError(f"option {name!r}: resource names are str, got {key!r}")
        out[key] = cpu_count(f"option {name!r}[{key!r}]", amount)
    return out


def _lifetime(name: str, value: Any) -> Any:
    if value is not None and value != "detached":
        raise ValueError(f"option {name!r} must be None or 'detached', got {value!r}")
    return value


def _max_retries(name: str, value: Any) -> int:
    return _int_at_least(-1)(name, value)  # -1: retry forever, as in Ray


# name -> (default, validator)
TASK_OPTIONS: Dict[str, tuple] = {
    "num_returns": (None, _num_returns),  # None: 1, or "streaming" for a generator function
    "max_retries": (3, _max_retries),
    "retry_exceptions": (False, _retry_exceptions),
    "num_cpus": (1.0, _cpus),
    "memory": (None, _optional(_int_at_least(1))),
    "generator_backpressure": (None, _optional(_int_at_least(1))),
    "name": (None, _name),
    "resources": (None, _resources),
}

ACTOR_OPTIONS: Dict[str, tuple] = {
    "max_restarts": (0, _max_retries),
    "max_task_retries": (0, _max_retries),
    "max_concurrency": (None, _optional(_int_at_least(1))),
    "num_cpus": (0.0, _cpus),
    "memory": (None, _optional(_int_at_least(1))),
    "name": (None, _name),              # a name pygen.get_actor finds it by
    "get_if_exists": (False, _bool),    # with name: the live actor of that name, if any
    "lifetime": (None, _lifetime),      # "detached": not ended when its handles are gone
    "resources": (None, _resources),
}

METHOD_OPTIONS: Dict[str, tuple] = {
    "num_returns": (None, _num_returns),
    "generator_backpressure": (None, _optional(_int_at_least(1))),
    "name": (None, _name),
}


def validate(table: Mapping[str, tuple], given: Mapping[str, Any], what: str) -> Dict[str, Any]:
    """Checked copies of ``given``; unknown names raise ``ValueError`` naming them."""
    out: Dict[str, Any] = {}
    for name, value in given.items():
        if name not in table:
            known = ", ".join(sorted(table))
            raise ValueError(f"unknown option {name!r} for {what}; known options: {known}")
        out[name] = table[name][1](name, value)
    return out


def with_defaults(table: Mapping[str, tuple], checked: Mapping[str, Any]) -> Dict[str, Any]:
    out = {name: default for name, (default, _) in table.items()}
    out.update(checked)
    return out
