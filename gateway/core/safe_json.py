"""One strict JSON loader for every platform body: bytes in, plain Python values out, or
``PayloadInvalid`` with a reason a sender can act on.

Python's ``json`` accepts more than RFC 8259 and more than the gateway can carry on: ``NaN`` and
``Infinity`` (which ``json.dumps`` writes back as non-JSON, so the message can never be sent to
OCS), ``1e999`` (read as ``inf``), integers of any length (a 5,000-digit one trips CPython's
4,300-digit ``int`` guard deep inside a parser), lone UTF-16 surrogates (``"\\ud800"`` becomes a
``str`` that cannot be encoded to UTF-8 later), and nesting as deep as the interpreter's stack
(``RecursionError``). Each of those is refused here, at the edge, before anything is stored.

The nesting depth is measured before parsing, on the text with its strings blanked out, by
peeling innermost ``[]``/``{}`` pairs one level per pass: at most ``max_depth + 1`` linear regex
passes, no recursion, and no object is built for input that is refused.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from gateway.core.errors import PayloadInvalid

__all__ = ["MAX_DEPTH", "MAX_INT_BITS", "loads"]

#: Deepest nesting of arrays/objects accepted. Real platform bodies stay under 10 (a Slack
#: event with blocks inside attachments inside a message is about 8); 32 leaves room.
MAX_DEPTH = 32
#: Largest integer magnitude accepted, in bits (signed 64-bit range). Telegram ids have at most
#: 52 significant bits (the Bot API promises they fit a double), Telegram dates and Slack
#: timestamps are Unix seconds; nothing a platform sends comes near 2**63.
MAX_INT_BITS = 63

_INT_LIMIT = 1 << MAX_INT_BITS
# 2**63 has 19 digits: a longer digit string (plus an optional sign) is refused before int().
_MAX_INT_CHARS = len(str(_INT_LIMIT)) + 1
# A JSON string, escapes included, up to its closing quote or the end of the text. The closing
# quote is optional so that a match never fails once started: a required one made every quote
# of an unterminated string a fresh start, quadratic in the body ('"' + '\\"' * 30_000: 21 s).
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_INNERMOST_PAIR = re.compile(r"\[\]|\{\}")
# An escaped surrogate; only then is the (rarer, slower) walk for lone surrogates needed.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def loads(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """Parse a request body as strict JSON.

    Parameters:
        body: the raw request body (UTF-8) or already-decoded text.
        max_depth: the deepest nesting of arrays and objects accepted.

    Returns:
        The parsed value: dicts, lists, str, int (within ±2**63), finite float, bool or None.

    Raises:
        PayloadInvalid: not UTF-8, not JSON, NaN/Infinity, a number out of range, a lone
            surrogate, or nesting deeper than ``max_depth``.
    """
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PayloadInvalid(f"the body is not UTF-8 (invalid byte at offset {exc.start})") from None
    else:
        text = body
    _check_depth(text, max_depth)
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise PayloadInvalid(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # the depth check makes this unreachable; kept as a last guard
        raise PayloadInvalid(f"not JSON: nested deeper than {max_depth} levels") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_lone_surrogates(value)
    return value


def _check_depth(text: str, max_depth: int) -> None:
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    # max_depth + 1 openers in a row are too deep whatever follows: the usual attack, refused
    # in one pass rather than max_depth.
    if re.search(r"[\[{]{" + str(max_depth + 1) + "}", brackets):
        raise PayloadInvalid(f"nested deeper than {max_depth} levels")
    for _ in range(max_depth):
        if not brackets:
            return
        brackets = _INNERMOST_PAIR.sub("", brackets)
    if not brackets:
        return
    if _INNERMOST_PAIR.search(brackets):
        raise PayloadInvalid(f"nested deeper than {max_depth} levels")
    raise PayloadInvalid("not JSON: brackets do not balance")


def _refuse_constant(name: str) -> Any:
    raise PayloadInvalid(f"{name} is not a JSON number")


def _bounded_int(digits: str) -> int:
    if len(digits) > _MAX_INT_CHARS:
        raise PayloadInvalid(f"integer of {len(digits)} digits is out of range (limit ±2**{MAX_INT_BITS})")
    value = int(digits)
    if not -_INT_LIMIT <= value < _INT_LIMIT:
        raise PayloadInvalid(f"integer {digits} is out of range (limit ±2**{MAX_INT_BITS})")
    return value


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise PayloadInvalid(f"number {literal[:40]} overflows a double")
    return value


def _refuse_lone_surrogates(value: Any) -> None:
    """Raise if any string or key holds a surrogate code point (they cannot be UTF-8 encoded).

    Recursion is safe: the depth was bounded before parsing.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise PayloadInvalid("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key)
            _refuse_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item)
