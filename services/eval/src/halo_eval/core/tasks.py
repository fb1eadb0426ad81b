"""Task names: curated groups, the built-in offline suite, and resolution against the installed lm-eval.

    index = TaskIndex()                       # builds lm-eval's TaskManager once (it reads ~15k YAMLs)
    names = index.resolve(["offline", "arc_easy"])   # -> ["halo_offline", "arc_easy"]
    index.resolve(["arc_eazy"])               # BadRequest: unknown task 'arc_eazy'; close matches: arc_easy, …

Curated groups (``core``, ``reasoning``, ``code``, ``instruction_following``, ``knowledge``, ``offline``)
expand to task names that exist in the installed lm-eval (a test resolves each one offline); any other
name is passed to lm-eval as is, after it was found in the task index. Unknown names are refused before
anything loads, with the closest known names.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest

#: The shipped offline suite (lm-eval YAMLs over local JSONL): ``--include_path`` for lm-eval.
SUITE_DIR = Path(__file__).resolve().parents[1] / "tasks"
#: Its tasks and group name.
OFFLINE_TASKS = ("halo_arith_mc", "halo_compare_mc", "halo_arith_gen", "halo_code_output")
OFFLINE_GROUP = "halo_offline"

#: Curated groups -> lm-eval task / group names (all present in lm-eval 0.4.13; a test checks them).
GROUPS: dict[str, tuple[str, ...]] = {
    "offline": (OFFLINE_GROUP,),
    "core": ("arc_easy", "arc_challenge", "hellaswag", "winogrande", "piqa", "boolq"),
    "reasoning": ("gsm8k", "arc_challenge", "bbh", "logiqa"),
    "code": ("humaneval", "mbpp"),
    "instruction_following": ("ifeval",),
    "knowledge": ("mmlu", "triviaqa", "nq_open", "truthfulqa_mc2"),
}


def expand(requested: Iterable[str]) -> list[str]:
    """Curated group names -> their tasks; other names unchanged; order kept, duplicates dropped.
    Accepts comma-separated strings too (``["core,offline"]``)."""
    out: list[str] = []
    for item in requested:
        for name in (x.strip() for x in str(item).split(",")):
            if not name:
                continue
            for task in GROUPS.get(name, (name,)):
                if task not in out:
                    out.append(task)
    return out


def check_known(tasks: Sequence[str], known: Iterable[str]) -> list[str]:
    """``tasks`` after expansion, each found in ``known``; else a BadRequest naming it with close matches."""
    names = expand(tasks)
    if not names:
        raise BadRequest("no tasks given (e.g. --tasks offline, or any lm-eval task name)", param="tasks")
    pool = set(known) | set(GROUPS)
    for name in names:
        if name not in pool:
            close = difflib.get_close_matches(name, sorted(pool), n=5, cutoff=0.6)
            hint = f"; close matches: {', '.join(close)}" if close else \
                f"; curated groups: {', '.join(GROUPS)} (or `lm-eval ls tasks` for every task)"
            raise BadRequest(f"unknown task {name!r}{hint}", param="tasks")
    return names


class TaskIndex:
    """lm-eval's TaskManager over the installed tasks plus the offline suite, built on first use (thread-safe).

    Building it reads every task YAML of lm-eval (seconds): keep one per process.
    """

    def __init__(self, include_paths: Sequence[Path | str] = ()) -> None:
        self.include_paths = [str(SUITE_DIR), *(str(p) for p in include_paths)]
        self._manager: Any = None
        self._lock = threading.Lock()

    @property
    def manager(self) -> Any:
        with self._lock:
            if self._manager is None:
                from lm_eval.tasks import TaskManager

                self._manager = TaskManager(include_path=self.include_paths)
            return self._manager

    @property
    def names(self) -> list[str]:
        return list(self.manager.all_tasks)

    def resolve(self, tasks: Sequence[str]) -> list[str]:
        """Expanded, checked task names (BadRequest naming an unknown one and its close matches)."""
        return check_known(tasks, self.names)
