"""Tool calls parsed back from generated text, for chat templates that define a tool-call format.

Supported formats (chosen from the chat template's text, :func:`tool_format_of`):

* ``hermes`` — Hermes / Qwen2.5 / Qwen3: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
  (several blocks allowed; text outside them is the message content);
* ``mistral`` — ``[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]``.

::

    calls, content = parse_tool_calls('<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>', "hermes")
    calls[0].function.name == "f" and calls[0].function.arguments == '{"x": 1}'
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from halo_serve.core.protocol import FunctionCall, ToolCall

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def tool_format_of(chat_template: str | None) -> str | None:
    """The tool-call format a chat template renders (None: the template knows no tool calls)."""
    if not chat_template:
        return None
    if "<tool_call>" in chat_template:
        return "hermes"
    if "[TOOL_CALLS]" in chat_template:
        return "mistral"
    return None


def _call(obj: Any) -> ToolCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    arguments = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(id=f"call_{uuid.uuid4().hex[:24]}", function=FunctionCall(name=obj["name"], arguments=arguments))


def parse_tool_calls(text: str, fmt: str | None) -> tuple[list[ToolCall], str | None]:
    """``(tool calls, remaining content or None)``. Text that does not parse stays content."""
    if fmt == "hermes" and "<tool_call>" in text:
        calls: list[ToolCall] = []
        for m in _HERMES.finditer(text):
            try:
                call = _call(json.loads(m.group(1)))
            except ValueError:
                call = None
            if call is None:
                return [], text  # a malformed block: return the text untouched, never guess
            calls.append(call)
        rest = _HERMES.sub("", text).strip()
        return calls, (rest or None)
    if fmt == "mistral" and "[TOOL_CALLS]" in text:
        head, _, tail = text.partition("[TOOL_CALLS]")
        try:
            data = json.loads(tail.strip())
        except ValueError:
            return [], text
        items = data if isinstance(data, list) else [data]
        calls = [c for c in (_call(x) for x in items) if c is not None]
        if len(calls) != len(items):
            return [], text
        return calls, (head.strip() or None)
    return [], text
