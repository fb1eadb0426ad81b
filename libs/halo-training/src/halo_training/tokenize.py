"""Turning validated records into token ids and loss masks: the one place both training and the
dry-run preview use, so what the preview shows is exactly what is trained.

SFT (:class:`SFTEncoder`) produces ``input_ids`` and ``labels`` (``-100`` = masked):

* chat records are rendered with the tokenizer's chat template; with ``completion_only`` only assistant
  tokens are trained. The mask comes from the template's ``{% generation %}`` markers when it has them,
  otherwise from rendering the conversation prefix before and after each assistant turn;
* prompt/completion records train the completion (plus EOS) only;
* plain text is trained in full (plus EOS).

Preference records (:class:`PreferenceEncoder`) produce ``prompt_ids`` and the ``chosen_ids`` /
``rejected_ids`` completions that follow it, as DPO/ORPO (and, concatenated, the reward model) need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from halo_schemas.training import RenderedSample, TokenSegment

from halo_training.data import split_preference

IGNORE = -100


def _ids(out: Any) -> list[int]:
    ids = out["input_ids"] if not isinstance(out, list) else out
    return list(ids)


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def has_generation_markers(template: str | None) -> bool:
    """True when a chat template marks assistant output with ``{% generation %}``."""
    return bool(template) and "generation" in template and "endgeneration" in template  # type: ignore[operator]


@dataclass
class EncodedSFT:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def num_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


@dataclass
class EncodedPair:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    truncated: bool = False


class SFTEncoder:
    """Encode SFT records of one format. ``encode(record)`` -> :class:`EncodedSFT` (truncated, keep start)."""

    def __init__(self, tokenizer: Any, fmt: str, max_length: int, *, completion_only: bool = True,
                 text_field: str = "text") -> None:
        self.tok, self.fmt, self.max_length = tokenizer, fmt, max_length
        self.completion_only, self.text_field = completion_only, text_field
        self.eos = tokenizer.eos_token or ""
        self.markers = has_generation_markers(getattr(tokenizer, "chat_template", None))

    def _template(self, messages: list[dict[str, Any]], **kw: Any) -> Any:
        return self.tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)

    def _with_eos(self, text: str) -> str:
        return text if not self.eos or text.endswith(self.eos) else text + self.eos

    def encode(self, record: dict[str, Any]) -> EncodedSFT:
        if self.fmt == "text":
            ids = _ids(self.tok(self._with_eos(record[self.text_field])))
            labels = list(ids)
        elif self.fmt == "messages":
            ids, labels = self._encode_messages(record["messages"])
        elif self.fmt == "prompt_completion":
            ids, labels = self._encode_prompt_completion(record["prompt"], record["completion"])
        else:
            raise ValueError(f"SFT cannot encode format {self.fmt!r}")
        truncated = len(ids) > self.max_length
        return EncodedSFT(ids[: self.max_length], labels[: self.max_length], truncated)

    def _encode_messages(self, messages: list[dict[str, Any]]) -> tuple[list[int], list[int]]:
        if self.markers:
            out = self._template(messages, return_assistant_tokens_mask=True)
            ids = _ids(out)
            mask = list(out.get("assistant_masks") or [0] * len(ids))
        else:
            ids = _ids(self._template(messages))
            mask = [0] * len(ids)
            for i, m in enumerate(messages):
                if m.get("role") != "assistant":
                    continue
                start = common_prefix_length(_ids(self._template(messages[:i], add_generation_prompt=True)), ids) if i else 0
                end = common_prefix_length(_ids(self._template(messages[: i + 1])), ids)
                for j in range(start, end):
                    mask[j] = 1
        if not self.completion_only:
            return ids, list(ids)
        return ids, [t if b else IGNORE for t, b in zip(ids, mask, strict=True)]

    def _encode_prompt_completion(self, prompt: Any, completion: Any) -> tuple[list[int], list[int]]:
        if isinstance(prompt, list):
            prompt_ids = _ids(self._template(prompt, add_generation_prompt=True))
            ids = _ids(self._template(prompt + completion))
        else:
            prompt_ids = _ids(self.tok(prompt))
            ids = _ids(self.tok(prompt + self._with_eos(completion)))
        # The completion starts where prompt and prompt+completion tokenizations diverge (tokens may
        # merge across the boundary).
        n = common_prefix_length(prompt_ids, ids)
        if not self.completion_only:
            return ids, list(ids)
        return ids, [IGNORE] * n + ids[n:]


class PreferenceEncoder:
    """Encode chosen/rejected records. ``encode(record)`` -> :class:`EncodedPair` or None when the prompt
    alone fills ``max_length`` (no completion token would survive truncation)."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.tok, self.max_length = tokenizer, max_length
        self.eos = tokenizer.eos_token or ""

    def _template(self, messages: list[dict[str, Any]], **kw: Any) -> list[int]:
        return _ids(self.tok.apply_chat_template(messages, tokenize=True, return_dict=True, **kw))

    def _with_eos(self, text: str) -> str:
        return text if not self.eos or text.endswith(self.eos) else text + self.eos

    def encode(self, record: dict[str, Any]) -> EncodedPair | None:
        prompt, chosen, rejected = split_preference(record)
        if isinstance(chosen, list):
            prompt_ids = self._template(prompt, add_generation_prompt=True) if prompt else []
            full_c = self._template(prompt + chosen)
            full_r = self._template(prompt + rejected)
        else:
            prompt_ids = _ids(self.tok(prompt))
            full_c = _ids(self.tok(prompt + self._with_eos(chosen)))
            full_r = _ids(self.tok(prompt + self._with_eos(rejected)))
        n = min(common_prefix_length(prompt_ids, full_c), common_prefix_length(prompt_ids, full_r))
        prompt_ids, chosen_ids, rejected_ids = full_c[:n], full_c[n:], full_r[n:]
        if len(prompt_ids) >= self.max_length:
            return None
        room = self.max_length - len(prompt_ids)
        truncated = len(chosen_ids) > room or len(rejected_ids) > room
        return EncodedPair(prompt_ids, chosen_ids[:room], rejected_ids[:room], truncated)


def encode_pairs(tokenizer: Any, records: list[Any], max_length: int) -> tuple[list[dict[str, list[int]]], dict[str, int]]:
    """prompt_ids / chosen_ids / rejected_ids rows; pairs whose prompt fills max_length are dropped."""
    enc = PreferenceEncoder(tokenizer, max_length)
    rows, dropped, truncated = [], 0, 0
    for rec in records:
        e = enc.encode(rec.record)
        if e is None or not e.chosen_ids or not e.rejected_ids:
            dropped += 1
            continue
        truncated += e.truncated
        rows.append({"prompt_ids": e.prompt_ids, "chosen_ids": e.chosen_ids, "rejected_ids": e.rejected_ids})
    return rows, {"records": len(rows), "dropped_records": dropped, "truncated_records": truncated}


def segments(tokenizer: Any, ids: list[int], trained: list[bool]) -> list[TokenSegment]:
    """Group consecutive tokens with the same trained flag and decode each group."""
    out: list[TokenSegment] = []
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or trained[i] != trained[start]:
            chunk = ids[start:i]
            out.append(TokenSegment(text=tokenizer.decode(chunk, skip_special_tokens=False), trained=trained[start],
                                    num_tokens=len(chunk)))
            start = i
    return out


def render_sft(tokenizer: Any, enc: EncodedSFT, source: str) -> RenderedSample:
    trained = [x != IGNORE for x in enc.labels]
    return RenderedSample(source=source, part="input", segments=segments(tokenizer, enc.input_ids, trained),
                          num_tokens=len(enc.input_ids), num_trained_tokens=sum(trained), truncated=enc.truncated)


def render_pair(tokenizer: Any, enc: EncodedPair, source: str) -> list[RenderedSample]:
    out = []
    for part, comp in (("chosen", enc.chosen_ids), ("rejected", enc.rejected_ids)):
        ids = enc.prompt_ids + comp
        trained = [False] * len(enc.prompt_ids) + [True] * len(comp)
        out.append(RenderedSample(source=source, part=part, segments=segments(tokenizer, ids, trained),
                                  num_tokens=len(ids), num_trained_tokens=len(comp), truncated=enc.truncated))
    return out
