"""The JSON bodies of the page's API (`avcil serve`), read defensively: whatever arrives is answered 400 (or 413
for too much), never 500. The API's requests are a name and two numbers, so the limits are tight: a few KiB, a
nesting depth of a few levels, finite numbers only (Python's json reads NaN, Infinity and 1e400, which no client of
this API sends on purpose).

    data = await read_json_object(request)   # a dict, or InvalidInput / BodyTooLarge
"""

from __future__ import annotations

import json
import math

from avcil.errors import InvalidInput

MAX_JSON_BYTES = 4096
MAX_JSON_DEPTH = 4  # {"label": ...} is depth 1; nothing the page sends goes deeper than 2


class BodyTooLarge(InvalidInput):
    """A request body over MAX_JSON_BYTES (answered 413)."""


def _refuse_constant(name: str):
    raise InvalidInput(f"the request body holds {name}; numbers must be finite")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidInput(f"the request body holds {text[:20]}, too large a number; numbers must be finite")
    return value


def parse_json_object(body: bytes) -> dict:
    """The JSON object in `body` (empty: {}), checked for depth and finite numbers."""
    if len(body) > MAX_JSON_BYTES:
        raise BodyTooLarge(f"the request body is over {MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(body or b"{}", parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InvalidInput("the request body is not JSON") from None
    except InvalidInput:  # a non-finite number, refused by the hooks above
        raise
    except RecursionError:  # nested deeper than the decoder's recursion limit
        raise InvalidInput(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as error:  # an integer of more digits than Python converts
        raise InvalidInput(f"the request body is not usable JSON: {error}") from None
    if not isinstance(data, dict):
        raise InvalidInput("the request body must be a JSON object")
    if _depth(data) > MAX_JSON_DEPTH:
        raise InvalidInput(f"the request body is nested deeper than {MAX_JSON_DEPTH} levels")
    return data


def _depth(value) -> int:
    """How deeply lists and objects nest in `value` (iteratively: the depth is what is being checked)."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, level = pending.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, level)
            pending.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def read_json_object(request) -> dict:
    """The request's body as a JSON object, read no further than MAX_JSON_BYTES (a client that sends more, or
    announces more in Content-Length, is refused without the rest being read)."""
    announced = request.headers.get("content-length", "")
    if announced.isdigit() and int(announced) > MAX_JSON_BYTES:
        raise BodyTooLarge(f"the request body is {announced} bytes; at most {MAX_JSON_BYTES} are expected")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise BodyTooLarge(f"the request body is over {MAX_JSON_BYTES} bytes")
    return parse_json_object(bytes(body))
