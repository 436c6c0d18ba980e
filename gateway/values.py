"""Bounds on the free-form values a profile adds to every request (``defaults``,
``overrides``, variants).

Such a value is copied into each upstream body and encoded with orjson, so a value that
validates but cannot be encoded, or costs megabytes, breaks every request: orjson refuses
nesting deeper than 255 levels, integers beyond 64 bits, non-string keys, dates and bytes
(which YAML happily produces: ``2024-01-01``, ``!!binary``, ``{1: 2}``). A value here must be
plain JSON (str, int, float, bool, null, list, mapping with string keys), at most
:data:`MAX_VALUE_DEPTH` levels deep, integers within 64 bits, and one block (all of
``defaults``, or all of ``overrides``) at most :data:`MAX_BLOCK_BYTES` bytes as JSON.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

#: deepest nesting of a free-form value (lists and mappings)
MAX_VALUE_DEPTH = 32
#: largest ``defaults`` or ``overrides`` block, as JSON bytes
MAX_BLOCK_BYTES = 64 * 1024
_INT64 = (-(2**63), 2**63 - 1)


def json_value_problem(block: dict[str, Any]) -> str | None:
    """What makes ``block`` unfit to be sent with every request (``None``: nothing).
    Iterative: a deep value is refused without recursing."""
    stack: list[tuple[Any, str, int]] = [(v, str(k), 1) for k, v in block.items()]
    while stack:
        value, path, depth = stack.pop()
        if value is None or isinstance(value, bool | str):
            continue
        if isinstance(value, int):
            if not _INT64[0] <= value <= _INT64[1]:
                return f"{path}: integers must fit in 64 bits"
            continue
        if isinstance(value, float):
            if not math.isfinite(value):
                return f"{path}: must be a finite number, got {value}"
            continue
        if isinstance(value, list | dict):
            if depth > MAX_VALUE_DEPTH:
                return f"{path.split('.')[0]}: nested deeper than {MAX_VALUE_DEPTH} levels"
            if isinstance(value, list):
                stack.extend((v, f"{path}.{i}", depth + 1) for i, v in enumerate(value))
            else:
                for k, v in value.items():
                    if not isinstance(k, str):
                        return f"{path}: mapping keys must be strings, got {k!r}"
                    stack.append((v, f"{path}.{k}", depth + 1))
            continue
        return f"{path}: not a JSON value ({type(value).__name__})"
    size = len(orjson.dumps(block))
    if size > MAX_BLOCK_BYTES:
        return f"more than {MAX_BLOCK_BYTES} bytes as JSON ({size})"
    return None
