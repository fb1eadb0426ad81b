"""Pull code out of a model completion, and guess its language.

Every code verifier calls :func:`extract_code` first, so the rules are the same everywhere:

1. ``<think>…</think>`` / ``<reasoning>…</reasoning>`` blocks are dropped (their code is a draft).
2. Fenced blocks (```` ```lang ```` or ``~~~lang``) win. With a wanted language, blocks tagged with it
   (or an alias: ``c++``/``cc``/``cxx`` -> cpp, ``py`` -> python, ``rs`` -> rust, ``golang`` -> go) or
   untagged blocks are candidates; among candidates the longest wins (models add short usage
   snippets next to the real answer). An unterminated fence (a truncated generation) runs to the end.
3. Else ``<code>…</code>`` / ``<answer>…</answer>`` tags.
4. Else the whole completion, stripped.

Usage::

    got = extract_code(completion, "python")
    got.code, got.language, got.source   # source: "fence" | "tag" | "raw" | "none"
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_THINK = re.compile(r"<(think|thinking|reasoning)>.*?</\1>", re.S | re.I)
_FENCE_OPEN = re.compile(r"^[ \t]*(```+|~~~+)[ \t]*([A-Za-z0-9_+#.-]*)[^\n]*$", re.M)
_TAG = re.compile(r"<(code|answer|solution)(?:\s[^>]*)?>(.*?)</\1>", re.S | re.I)

LANGUAGE_ALIASES: dict[str, str] = {
    "c": "c", "h": "c",
    "cpp": "cpp", "c++": "cpp", "cc": "cpp", "cxx": "cpp", "hpp": "cpp",
    "python": "python", "py": "python", "python3": "python", "py3": "python",
    "rust": "rust", "rs": "rust",
    "go": "go", "golang": "go",
    "json": "json",
    "javascript": "javascript", "js": "javascript",
    "bash": "shell", "sh": "shell", "shell": "shell",
}


def normalize_language(name: str | None) -> str | None:
    """Canonical language name for a fence tag or hint (``'C++'`` -> ``'cpp'``); None if unknown/empty."""
    if not name:
        return None
    return LANGUAGE_ALIASES.get(name.strip().lower())


@dataclass(frozen=True)
class ExtractedCode:
    """Result of :func:`extract_code`. ``code`` is empty when nothing usable was found."""

    code: str
    language: str | None
    source: str  # "fence" | "tag" | "raw" | "none"
    blocks: int = 0  # fenced blocks seen

    @property
    def empty(self) -> bool:
        return not self.code.strip()


@dataclass(frozen=True)
class _Block:
    lang: str | None
    raw_lang: str
    code: str


def strip_reasoning(text: str) -> str:
    """Remove ``<think>…</think>``-style reasoning blocks (and an unclosed trailing one)."""
    text = _THINK.sub("", text)
    m = re.search(r"<(think|thinking|reasoning)>", text, re.I)
    if m and not re.search(rf"</{m.group(1)}>", text[m.end():], re.I):
        # An unclosed reasoning block (a generation cut off while thinking): what follows is
        # reasoning, only what precedes it can be an answer.
        return text[: m.start()]
    return text


def fenced_blocks(text: str) -> list[_Block]:
    """Every fenced block in order, with its normalized language (None when untagged/unknown)."""
    blocks: list[_Block] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if not m:
            break
        fence, tag = m.group(1), m.group(2)
        body_start = m.end() + 1
        # The closing fence uses the same character and at least as many of them.
        close = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", re.M)
        c = close.search(text, body_start)
        body = text[body_start: c.start()] if c else text[body_start:]
        blocks.append(_Block(normalize_language(tag), tag.lower(), body.rstrip("\n") + ("\n" if body.strip() else "")))
        if not c:
            break
        pos = c.end()
    return blocks


def extract_code(text: str, language: str | None = None) -> ExtractedCode:
    """The code in ``text`` (see module docstring for the rules). ``language`` picks among blocks."""
    want = normalize_language(language) if language else None
    cleaned = strip_reasoning(text or "")
    blocks = [b for b in fenced_blocks(cleaned) if b.code.strip()]
    if blocks:
        candidates = blocks
        if want:
            tagged = [b for b in blocks if b.lang == want]
            untagged = [b for b in blocks if not b.raw_lang]
            candidates = tagged or untagged or blocks
        best = max(candidates, key=lambda b: len(b.code))
        lang = best.lang or want or detect_language(best.code)
        return ExtractedCode(best.code, lang, "fence", len(blocks))
    tags = [m.group(2) for m in _TAG.finditer(cleaned) if m.group(2).strip()]
    if tags:
        code = max(tags, key=len).strip("\n") + "\n"
        return ExtractedCode(code, want or detect_language(code), "tag", 0)
    raw = cleaned.strip("\n")
    if not raw.strip():
        return ExtractedCode("", want, "none", 0)
    return ExtractedCode(raw + "\n", want or detect_language(raw), "raw", 0)


_SIGNS: list[tuple[str, list[tuple[str, int]]]] = [
    ("rust", [(r"\bfn\s+\w+\s*(<[^>]*>)?\s*\(", 3), (r"\blet\s+mut\b", 3), (r"\bprintln!\s*\(", 4),
              (r"\buse\s+std::", 4), (r"\bimpl\b", 2), (r"->\s*(i32|i64|u32|u64|usize|String|bool|Vec<)", 3)]),
    ("go", [(r"^\s*package\s+\w+", 4), (r"\bfunc\s+(\(\w+\s+\*?\w+\)\s*)?\w+\s*\(", 3), (r"\bfmt\.", 4),
            (r":=", 1), (r'^\s*import\s+\(?\s*"', 3)]),
    ("cpp", [(r"#include\s*<(iostream|vector|string|map|set|algorithm|bits/stdc\+\+\.h|unordered_map)>", 5),
             (r"\bstd::", 4), (r"\busing\s+namespace\s+std\b", 5), (r"\bcout\s*<<", 4), (r"\bcin\s*>>", 4),
             (r"\btemplate\s*<", 3), (r"\bclass\s+\w+\s*\{", 2)]),
    ("c", [(r"#include\s*<(stdio|stdlib|string|math|stdint|stdbool|ctype|limits)\.h>", 4), (r"\bprintf\s*\(", 2),
           (r"\bscanf\s*\(", 3), (r"\bint\s+main\s*\(", 2), (r"\bmalloc\s*\(", 2)]),
    ("python", [(r"^\s*def\s+\w+\s*\(.*\)\s*(->\s*[^:]+)?:\s*$", 4), (r"^\s*import\s+\w+", 2),
                (r"^\s*from\s+\w+(\.\w+)*\s+import\b", 3), (r"\bprint\s*\(", 1), (r"^\s*class\s+\w+.*:\s*$", 2),
                (r"\bself\b", 1), (r"\belif\b", 3), (r"^\s*if\s+__name__\s*==", 4)]),
    ("json", [(r"^\s*[\[{]", 1)]),
]


def detect_language(code: str) -> str | None:
    """Best guess of ``code``'s language (c, cpp, rust, go, python, json) by weighted signatures."""
    text = code.strip()
    if not text:
        return None
    if text[0] in "[{":
        import json

        try:
            json.loads(text)
            return "json"
        except ValueError:
            pass
    scores: dict[str, int] = {}
    for lang, signs in _SIGNS:
        if lang == "json":
            continue
        scores[lang] = sum(w for pat, w in signs if re.search(pat, text, re.M))
    # C++ sources usually also match the C signs; C++-only signs decide.
    if scores.get("cpp", 0) and scores.get("c", 0):
        scores["cpp"] += scores["c"]
    best = max(scores.items(), key=lambda kv: kv[1])
    return best[0] if best[1] >= 3 else None
