"""The checks of what a user gives the device: a class name, and the numbers of the command line and the page.
One rule per kind of value, used by `avcil run/learn/serve` and by the page's JSON API alike, so that the two never
disagree on what they accept. Each check returns the value (as the type it should be) or raises InvalidInput with a
message that names the field; the command line turns that into one line and exit 2, the page into a 400.

The decision rule's own settings (score, threshold, smoothing, top-k) are checked by DecisionRule
(avcil.runtime.decision), which owns them: `check_rule` builds one, so that a bad value is refused before any model
is loaded.
"""

from __future__ import annotations

import math

from avcil.errors import InvalidInput

MAX_LABEL_CHARS = 64  # a class name is shown in a console line, on the page and on the annotated video
MAX_VERSION_CHARS = 64  # version names are short (v0001); a longer one is not a version, whatever it is


def check_label(value, field: str = "label") -> str:
    """A class name: text of 1 to MAX_LABEL_CHARS printable characters, without leading or trailing whitespace
    (refused rather than trimmed: "3 " and "3" would otherwise be two classes that look alike), and not the word
    decisions use for no class."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field}: the new class needs a name")
    if value != value.strip():
        raise InvalidInput(f"{field} {value!r} starts or ends with whitespace; give the name without it")
    if len(value) > MAX_LABEL_CHARS:
        raise InvalidInput(f"{field} is {len(value)} characters long; at most {MAX_LABEL_CHARS} are allowed")
    if not value.isprintable():
        raise InvalidInput(f"{field} {value!r} holds a control or other unprintable character; a class name is "
                           f"printable text on one line")
    from avcil.runtime.decision import UNKNOWN

    if value == UNKNOWN:
        raise InvalidInput(f"{field} {value!r} is what a decision says when no class is recognised; pick another "
                           f"name")
    return value


def check_version_name(value, field: str = "version") -> str:
    """The name of a model version as given by a user (e.g. v0002): short printable text. Whether it exists is the
    model dir's to say."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"name the {field}, e.g. v0001")
    if len(value) > MAX_VERSION_CHARS or not value.isprintable():
        raise InvalidInput(f"{field} must be a version name of at most {MAX_VERSION_CHARS} printable characters "
                           f"(e.g. v0001)")
    return value


def _finite(value, field: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidInput(f"{field} must be {what}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise InvalidInput(f"{field} must be {what}, got a number too large") from None
    if not math.isfinite(number):
        raise InvalidInput(f"{field} must be {what}, got {value}")
    return number


def check_number(value, field: str, low: float = -math.inf, high: float = math.inf, above: bool = False) -> float:
    """A finite number from `low` to `high` (above `low`, not equal to it, when `above`)."""
    bounds = ([f"> {low}" if above else f">= {low}"] if low > -math.inf else []) + (
        [f"<= {high}"] if high < math.inf else [])
    what = " and ".join(["a finite number " + bounds[0], *bounds[1:]]) if bounds else "a finite number"
    number = _finite(value, field, what)
    if number < low or (above and number == low) or number > high:
        raise InvalidInput(f"{field} must be {what}, got {value}")
    return number


def check_whole(value, field: str, low: int = 1, high: float = math.inf) -> int:
    """A whole number from `low` to `high` (an integral float such as 3.0 is taken as 3)."""
    what = f"a whole number >= {low}" if math.isinf(high) else f"a whole number from {low} to {int(high)}"
    number = _finite(value, field, what)
    if number != int(number) or not low <= number <= high:
        raise InvalidInput(f"{field} must be {what}, got {value}")
    return int(number)


def check_flag(value, field: str) -> bool:
    """true or false, as JSON writes them (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        raise InvalidInput(f"{field} must be true or false, got {value!r}")
    return value


def check_port(value, field: str = "--port") -> int:
    """A TCP port to listen on; 0 asks the system for a free one."""
    return check_whole(value, field, 0, 65535)


def check_rule(score: str | None, threshold: float | None, smoothing: int, top_k: int):
    """The decision rule these settings make (DecisionRule validates them: the threshold within the score's range,
    smoothing and top-k whole numbers >= 1); an InvalidInput naming the bad one. Score None: the default's, which
    the model may yet replace with the fallback's (checked again when the model is loaded)."""
    from avcil.runtime.decision import DEFAULT_SCORE, DecisionRule

    return DecisionRule(score or DEFAULT_SCORE, threshold, smoothing, top_k)
