"""Synthesis: seed prompts -> a teacher -> a verifier -> kept rows, resumable.

* ``sft``: per seed, the best sample (or every passing one) with ``reward >= threshold`` becomes
  ``{"prompt", "completion", "reward", "seed_row"}``;
* ``preference``: ``n >= 2`` samples per seed; when the best reaches ``threshold`` and beats the worst by at
  least ``margin`` the pair becomes ``{"prompt", "chosen", "rejected", "chosen_reward", "rejected_reward",
  "seed_row"}``; ties and small margins are dropped.

A teacher failure for a prompt is a counted rejection (``teacher_error``), never a crash. Seeds are processed in
batches; after each batch the output is flushed and the batch's seed rows are appended to
``<output>.done`` — a restart (a redelivered job) skips every seed listed there or present in the output, so
nothing is generated twice and no row is duplicated.

The teacher and the verifier are plain callables (see :class:`Teacher`, :data:`VerifyFn`), so this module runs
without a bus: the service plugs in an OpenAI-compatible HTTP teacher or the rollout service, and the
verifier-sandbox client.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from halo_common.records import RecordWriter, sha256_file
from halo_schemas.data import SynthesizeParams, TeacherSpec
from halo_schemas.verifiers import VerifyContext
from pydantic import ValidationError

from halo_data.core.common import Cancelled, DataError, Progress, ProgressFn, StepResult, StopFn, ignore, never, records

SEED_KEYS = ("prompt", "text", "question", "instruction")
#: Verifier call: [(completion, context)] -> rewards in [0, 1], in order.
VerifyFn = Callable[[list[tuple[str, VerifyContext]]], list[float]]


class Teacher(Protocol):
    def generate(self, prompts: list[str], n: int) -> list[list[str] | Exception]:
        """``n`` completions per prompt, or the exception that prompt's request raised."""
        ...


class OpenAITeacher:
    """Any OpenAI-compatible server (serve's /v1, vLLM, llama.cpp, a provider). A server that returns fewer than
    ``n`` choices is asked again for the rest."""

    def __init__(self, spec: TeacherSpec, concurrency: int = 4, system: str | None = None) -> None:
        self.spec, self.system = spec, system
        headers = {}
        if spec.api_key_env:
            key = os.environ.get(spec.api_key_env)
            if not key:
                raise DataError(f"teacher.api_key_env: environment variable {spec.api_key_env} is not set")
            headers["Authorization"] = f"Bearer {key}"
        self.client = httpx.Client(base_url=(spec.url or "").rstrip("/"), headers=headers, timeout=spec.timeout_s)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="teacher")

    def _one(self, prompt: str, n: int) -> list[str]:
        s = self.spec
        out: list[str] = []
        for _ in range(n):  # bounded: at most n requests when a server ignores `n`
            want = n - len(out)
            body: dict[str, Any] = {"model": s.model, "n": want, "max_tokens": s.max_tokens, "temperature": s.temperature,
                                    "top_p": s.top_p}
            if s.chat:
                msgs = ([{"role": "system", "content": self.system}] if self.system else []) + [
                    {"role": "user", "content": prompt}]
                r = self.client.post("/chat/completions", json={**body, "messages": msgs})
            else:
                r = self.client.post("/completions", json={**body, "prompt": prompt})
            if r.status_code >= 400:
                raise RuntimeError(f"teacher HTTP {r.status_code}: {r.text[:200]}")
            choices = r.json().get("choices") or []
            for c in choices:
                text = (c.get("message") or {}).get("content") if s.chat else c.get("text")
                if isinstance(text, str):
                    out.append(text)
            if len(out) >= n or not choices:
                break
        if not out:
            raise RuntimeError("teacher returned no completions")
        return out[:n]

    def generate(self, prompts: list[str], n: int) -> list[list[str] | Exception]:
        def call(p: str) -> list[str] | Exception:
            try:
                return self._one(p, n)
            except Exception as exc:  # counted per prompt, never a crash
                return exc

        return list(self.pool.map(call, prompts))

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        self.client.close()


def seed_prompt(rec: dict[str, Any], key: str | None, src: str) -> str:
    if key:
        if not isinstance(rec.get(key), str):
            raise DataError(f"{src}: no string field {key!r}; the record has [{', '.join(sorted(rec))}]")
        return rec[key]
    for k in SEED_KEYS:
        if isinstance(rec.get(k), str):
            return rec[k]
    raise DataError(f"{src}: no seed prompt: expected one of {', '.join(SEED_KEYS)} (or prompt_key); the record has "
                    f"[{', '.join(sorted(rec))}]")


_CONTEXT_FIELDS = tuple(VerifyContext.model_fields)


def seed_context(rec: dict[str, Any], prompt: str, mapping: dict[str, str], src: str) -> VerifyContext:
    """The verifier's context from the seed: mapped fields, fields named like a context field, and the prompt."""
    ctx: dict[str, Any] = {k: rec[k] for k in _CONTEXT_FIELDS if k in rec and rec[k] is not None}
    for field, source in mapping.items():
        if field not in _CONTEXT_FIELDS:
            raise DataError(f"context_fields: {field!r} is not a verifier context field; known: {', '.join(_CONTEXT_FIELDS)}")
        if source in rec:
            ctx[field] = rec[source]
    ctx.setdefault("prompt", prompt)
    try:
        return VerifyContext.model_validate(ctx)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DataError(f"{src}: verifier context field {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@dataclass
class _Seed:
    row: int
    src: str
    prompt: str
    context: VerifyContext


def _done_rows(output: Path, done_file: Path) -> set[int]:
    """Seed rows already handled: listed in the done file, or present in the output (a batch whose rows were
    written but not yet listed). A torn last line (the worker died mid-write) is cut off first."""
    done: set[int] = set()
    if done_file.exists():
        done.update(int(x) for x in done_file.read_text().split() if x.strip().isdigit())
    if output.exists():
        data = output.read_bytes()
        if data and not data.endswith(b"\n"):
            with output.open("r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
            data = data[: data.rfind(b"\n") + 1]
        for line in data.splitlines():
            try:
                done.add(int(json.loads(line)["seed_row"]))
            except (ValueError, KeyError, TypeError):
                continue
    return done


def synthesize(input_path: str | Path, output_path: str | Path, params: SynthesizeParams, *, teacher: Teacher,
               verify: VerifyFn, progress: ProgressFn = ignore, should_stop: StopFn = never) -> StepResult:
    """Run synthesis; resumable (see the module doc). ``output_path`` must be ``.jsonl`` (it is appended to)."""
    output_path = Path(output_path)
    if output_path.suffix.lower() != ".jsonl":
        raise DataError(f"{output_path}: synthesize writes .jsonl (it appends as it goes, to resume)")
    done_file = output_path.with_name(output_path.name + ".done")
    done = _done_rows(output_path, done_file)
    resumed = len(done)
    reasons: Counter[str] = Counter()
    prog = Progress()
    kept = 0
    errors: list[str] = []
    writer = RecordWriter(output_path, append=True)
    done_f = done_file.open("a", encoding="utf-8")
    try:
        batch: list[_Seed] = []

        def run_batch() -> None:
            nonlocal kept
            outs = teacher.generate([s.prompt for s in batch], params.n)
            items: list[tuple[str, VerifyContext]] = []
            owners: list[tuple[int, int]] = []
            for i, (seed, out) in enumerate(zip(batch, outs, strict=True)):
                if isinstance(out, Exception):
                    reasons["teacher_error"] += 1
                    if len(errors) < 5:
                        errors.append(f"{seed.src}: {out}")
                    continue
                for j, text in enumerate(out):
                    items.append((text, seed.context))
                    owners.append((i, j))
            rewards = verify(items) if items else []
            per_seed: dict[int, list[tuple[float, str]]] = {}
            for (i, _), (text, _), r in zip(owners, items, rewards, strict=True):
                per_seed.setdefault(i, []).append((float(r), text))
            for i, seed in enumerate(batch):
                samples = per_seed.get(i)
                if samples is None:
                    continue
                rows = _rows(params, seed, samples, reasons)
                for row in rows:
                    writer.write(row)
                kept += len(rows)
            writer.flush(fsync=True)  # rows on disk before their seeds are listed as done
            done_f.write("".join(f"{s.row}\n" for s in batch))
            done_f.flush()
            prog.rows_out = kept
            prog.dropped = sum(reasons.values())
            progress(prog)
            batch.clear()

        for row, (rec, src) in enumerate(records(input_path), start=1):
            prog.rows_in += 1
            if row in done:
                continue
            prompt = seed_prompt(rec, params.prompt_key, src)
            if not prompt.strip():
                reasons["empty_prompt"] += 1
                continue
            batch.append(_Seed(row, src, prompt, seed_context(rec, prompt, params.context_fields, src)))
            if len(batch) >= params.batch_size:
                if should_stop():
                    raise Cancelled("synthesize cancelled")
                run_batch()
        if batch:
            run_batch()
        writer.close()
    except BaseException:
        writer.abort()  # appending: what was written stays, a restart resumes after it
        raise
    finally:
        done_f.close()
    total_rows = sum(1 for _ in output_path.open("rb"))
    return StepResult("synthesize", str(output_path), prog.rows_in, total_rows, dropped=dict(reasons),
                      details={"kind": params.kind, "seeds_resumed": resumed, "rows_written_now": kept,
                               "teacher_errors": reasons.get("teacher_error", 0), "teacher_error_examples": errors,
                               "verifier": params.verifier.name, "sha256": sha256_file(output_path)})


def _rows(params: SynthesizeParams, seed: _Seed, samples: list[tuple[float, str]], reasons: Counter[str]) -> list[dict[str, Any]]:
    ranked = sorted(samples, key=lambda s: -s[0])
    base = {"prompt": seed.prompt, "seed_row": seed.row, "verifier": params.verifier.name}
    if params.kind == "sft":
        passing = [s for s in ranked if s[0] >= params.threshold]
        if not passing:
            reasons["below_threshold"] += 1
            return []
        chosen = passing if params.keep_all_passing else passing[:1]
        return [{**base, "completion": text, "reward": round(r, 6)} for r, text in chosen]
    (best_r, best), (worst_r, worst) = ranked[0], ranked[-1]
    if best_r < params.threshold:
        reasons["below_threshold"] += 1
        return []
    if best_r == worst_r:
        reasons["tie"] += 1
        return []
    if best_r - worst_r < params.margin:
        reasons["below_margin"] += 1
        return []
    return [{**base, "chosen": best, "rejected": worst, "chosen_reward": round(best_r, 6),
             "rejected_reward": round(worst_r, 6)}]
