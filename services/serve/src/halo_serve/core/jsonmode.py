"""JSON-prefix checking for ``response_format: {"type": "json_object"}``.

A backend constrains generation with :func:`json_prefix_state`: a candidate token is allowed when
the text so far plus the token is still a prefix of some JSON object, and the end-of-sequence
token is allowed only when the text is a complete JSON object (whitespace around it is fine)::

    json_prefix_state('{"a": [1, 2')   # "partial"
    json_prefix_state('{"a": 1}')      # "complete"
    json_prefix_state('{"a" 1')        # "invalid"

The checker is a small character-level pushdown automaton (objects, arrays, strings with
escapes, numbers, true/false/null); it is exact for prefixes, so a sequence constrained by it
can always still be completed to valid JSON.
"""

from __future__ import annotations

from typing import Literal

State = Literal["invalid", "partial", "complete"]

_WS = " \t\n\r"
_LITERALS = ("true", "false", "null")


def json_prefix_state(text: str, *, top_level_object: bool = True) -> State:
    """Whether ``text`` is an invalid, partial or complete JSON value (an object when
    ``top_level_object``, as OpenAI's json_object mode requires)."""
    stack: list[str] = []  # "{" / "[" containers
    # expect: what may come next: "value", "key" (or "}" if empty), "colon", "comma_or_end", "done"
    expect = "value"
    empty_container = False
    i, n = 0, len(text)
    started = False
    while i < n:
        c = text[i]
        if c in _WS:
            i += 1
            continue
        if expect == "done":
            return "invalid"
        if expect == "value":
            if not started and top_level_object and c != "{":
                return "invalid"
            started = True
            if c == "{":
                stack.append("{")
                expect, empty_container = "key", True
                i += 1
                continue
            if c == "[":
                stack.append("[")
                expect, empty_container = "value", True
                i += 1
                continue
            if c == "]" and stack and stack[-1] == "[" and empty_container:
                stack.pop()
                expect = "comma_or_end" if stack else "done"
                empty_container = False
                i += 1
                continue
            if c == '"':
                end = _scan_string(text, i)
                if end is None:
                    return "partial" if _string_prefix_ok(text, i) else "invalid"
                i = end
                expect = "comma_or_end" if stack else "done"
                empty_container = False
                continue
            if c == "-" or c.isdigit():
                end, ok = _scan_number(text, i)
                if not ok:
                    return "invalid"
                if end == n:
                    return "partial"
                i = end
                expect = "comma_or_end" if stack else "done"
                empty_container = False
                continue
            for lit in _LITERALS:
                if lit.startswith(text[i:i + len(lit)]) and text[i] == lit[0]:
                    chunk = text[i:i + len(lit)]
                    if len(chunk) < len(lit):
                        return "partial"
                    i += len(lit)
                    expect = "comma_or_end" if stack else "done"
                    empty_container = False
                    break
            else:
                return "invalid"
            continue
        if expect == "key":
            if c == "}" and empty_container:
                stack.pop()
                expect = "comma_or_end" if stack else "done"
                empty_container = False
                i += 1
                continue
            if c != '"':
                return "invalid"
            end = _scan_string(text, i)
            if end is None:
                return "partial" if _string_prefix_ok(text, i) else "invalid"
            i = end
            expect = "colon"
            continue
        if expect == "colon":
            if c != ":":
                return "invalid"
            expect, empty_container = "value", False
            i += 1
            continue
        if expect == "comma_or_end":
            top = stack[-1]
            if c == ",":
                expect = "key" if top == "{" else "value"
                empty_container = False
                i += 1
                continue
            if (c == "}" and top == "{") or (c == "]" and top == "["):
                stack.pop()
                expect = "comma_or_end" if stack else "done"
                i += 1
                continue
            return "invalid"
    return "complete" if expect == "done" else "partial"


def _scan_string(text: str, i: int) -> int | None:
    """Index after the closing quote of the string starting at ``text[i] == '"'``, or None if open."""
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        j += 1
    return None


_HEX = set("0123456789abcdefABCDEF")


def _string_prefix_ok(text: str, i: int) -> bool:
    """An unterminated string is a valid prefix: no control characters, valid escapes so far."""
    j = i + 1
    n = len(text)
    while j < n:
        c = text[j]
        if ord(c) < 0x20:
            return False
        if c == "\\":
            if j + 1 >= n:
                return True
            e = text[j + 1]
            if e == "u":
                digits = text[j + 2:j + 6]
                if not all(d in _HEX for d in digits):
                    return False
                j += 2 + len(digits)
                continue
            if e not in '"\\/bfnrt':
                return False
            j += 2
            continue
        j += 1
    return True


def _scan_number(text: str, i: int) -> tuple[int, bool]:
    """Scan a JSON number prefix from ``i``: (end index, ok). ok is False for an invalid number."""
    n = len(text)
    j = i
    if text[j] == "-":
        j += 1
        if j == n:
            return j, True
    if not text[j].isdigit():
        return j, False
    if text[j] == "0":
        j += 1
        if j < n and text[j].isdigit():
            return j, False
    else:
        while j < n and text[j].isdigit():
            j += 1
    if j < n and text[j] == ".":
        j += 1
        if j == n:
            return j, True
        if not text[j].isdigit():
            return j, False
        while j < n and text[j].isdigit():
            j += 1
    if j < n and text[j] in "eE":
        j += 1
        if j < n and text[j] in "+-":
            j += 1
        if j == n:
            return j, True
        if not text[j].isdigit():
            return j, False
        while j < n and text[j].isdigit():
            j += 1
    return j, True
