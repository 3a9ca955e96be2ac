"""Request field types that accept exactly what their JSON schema says, no more.

pydantic's lax mode turns `true` into 1, "10" into 10 and 0 into 1970-01-01, where the OpenAPI document
promises an integer, a number, a date-time string. These types refuse what the schema refuses (schemathesis
checks both ways), while an integral number such as 3.0 stays a valid integer, as JSON Schema has it.
The bounds sit inside the type, before the check, so that they show in the schema as minimum and maximum.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import annotated_types as at
from pydantic import AwareDatetime, BeforeValidator

SAFE = 2**53 - 1  # the largest integer every JSON parser reads exactly (JavaScript's Number.MAX_SAFE_INTEGER)


def _integer(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise ValueError("must be an integer")
    return int(value)


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return value


def _string(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def integer(ge: int = -SAFE, le: int = SAFE) -> Any:
    return Annotated[int, at.Ge(ge), at.Le(le), BeforeValidator(_integer)]


def number(ge: float = -math.inf, le: float = math.inf) -> Any:
    return Annotated[float, at.Ge(ge), at.Le(le), BeforeValidator(_number)]


DateTime = Annotated[AwareDatetime, BeforeValidator(_string)]
