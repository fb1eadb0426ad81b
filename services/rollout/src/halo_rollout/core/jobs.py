"""Large rollouts as jobs: prompts in, one JSON line per prompt out, resumable chunk by chunk.

``run_rollout_job(spec, backend, out_path)`` reads the prompts (inline or JSONL), fixes every
prompt's seed (its own, or one derived from the job seed and its index), and generates
``chunk_size`` prompts at a time, appending one :class:`~halo_schemas.rollout.SampleResult` line
per prompt and fsyncing after each chunk. Run it again on the same file (a redelivered job whose
worker died) and it keeps the complete lines, drops a torn last line, and generates only what is
missing — with the same seeds, so the file ends up as if nothing had happened.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from halo_common.errors import BadRequest, NotFound
from halo_sampling.backends.base import RolloutBackend, derive_seed
from halo_schemas.base import describe_validation_error
from halo_schemas.rollout import RolloutJobSpec, SampleParams, SampleRequest
from pydantic import ValidationError


@dataclass
class JobProgress:
    """Where a rollout job stands after a chunk."""

    done: int
    total: int
    samples: int
    tokens: int
    elapsed_s: float

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.elapsed_s if self.elapsed_s > 0 else 0.0


def load_requests(spec: RolloutJobSpec) -> list[SampleRequest]:
    """The job's prompts, each with its params resolved and its seed fixed (BadRequest names file:line)."""
    if spec.requests:
        raw = list(spec.requests)
    else:
        assert spec.prompts_file is not None
        raw = list(read_prompts_file(Path(spec.prompts_file)))
    out = []
    for i, req in enumerate(raw):
        params = req.params or spec.params
        if params.seed is None:
            params = params.model_copy(update={"seed": derive_seed(spec.seed, i)})
        out.append(req.model_copy(update={"params": params}))
    return out


def read_prompts_file(path: Path) -> Iterator[SampleRequest]:
    """SampleRequest objects from a JSONL file; a bad line is a BadRequest naming ``file:line``."""
    if not path.is_file():
        raise NotFound(f"prompts file not found: {path}", param="prompts_file")
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield SampleRequest.model_validate_json(line)
            except ValidationError as exc:
                raise BadRequest(describe_validation_error(exc, what=f"{path}:{lineno}"), param="prompts_file") from None


def completed_lines(out_path: Path) -> int:
    """Number of complete result lines already in ``out_path``; a torn last line is cut off."""
    if not out_path.exists():
        return 0
    data = out_path.read_bytes()
    keep = data.rfind(b"\n") + 1
    if keep != len(data):
        with out_path.open("r+b") as f:
            f.truncate(keep)
    return data[:keep].count(b"\n")


def run_rollout_job(
    spec: RolloutJobSpec,
    backend: RolloutBackend,
    out_path: Path,
    progress: Callable[[JobProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> JobProgress:
    """Generate every prompt of ``spec`` into ``out_path`` (resuming after its complete lines)."""
    requests = load_requests(spec)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    start_at = completed_lines(out_path)
    if start_at > len(requests):
        raise BadRequest(f"{out_path} already has {start_at} lines for {len(requests)} prompts", param="output")
    state = JobProgress(start_at, len(requests), 0, 0, 0.0)
    t0 = time.perf_counter()
    with out_path.open("a", encoding="utf-8") as f:
        for lo in range(start_at, len(requests), spec.chunk_size):
            if should_stop is not None and should_stop():
                break
            chunk = requests[lo:lo + spec.chunk_size]
            results = backend.generate(chunk, SampleParams())
            for k, res in enumerate(results):
                line = res.model_copy(update={"index": lo + k})
                f.write(line.model_dump_json() + "\n")
                state.samples += len(res.completions)
                state.tokens += sum(c.num_tokens for c in res.completions)
            f.flush()
            os.fsync(f.fileno())
            state.done = lo + len(chunk)
            state.elapsed_s = time.perf_counter() - t0
            if progress is not None:
                progress(state)
    state.elapsed_s = time.perf_counter() - t0
    return state


def summarize(out_path: Path) -> dict[str, float | int]:
    """Counts over a finished output file (for the run summary)."""
    prompts = samples = tokens = stops = 0
    with out_path.open(encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            prompts += 1
            for c in rec["completions"]:
                samples += 1
                tokens += c["num_tokens"]
                stops += c["finish_reason"] == "stop"
    return {"prompts": prompts, "samples": samples, "tokens": tokens,
            "stop_ratio": stops / samples if samples else 0.0}
