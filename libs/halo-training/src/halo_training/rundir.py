"""The run directory (docs/architecture.md, "A run on disk") and crash-safe checkpoints.

::

    runs/<run_id>/
      spec.json  replay.json  metrics.jsonl  training_summary.json
      checkpoints/checkpoint-<step>/   complete, resumable (renamed into place atomically)
      adapter/ | final/                HF / PEFT exports
      samples_before.json              sample answers of the untrained model (kept across resumes)
      logs/                            train.log (the job's own log, halo_training.runlog), events.jsonl of
                                       multi-process runs, launcher output
      .staging/                        where the HF Trainer writes a checkpoint before it is complete

Every JSON file is written to a temporary name and renamed, so a ``kill -9`` at any instant leaves either
the old or the new file, never half of one. ``metrics.jsonl`` is append-only; a torn last line (killed
mid-write) and lines past the checkpoint a resume starts from are dropped by :meth:`RunDir.rewind_metrics`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("halo_training.metrics")

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


#: Metrics shown first in a log line (when present), then the rest alphabetically, at most LINE_METRICS.
_FIRST = ("loss", "eval_loss", "reward", "learning_rate", "grad_norm", "tokens_per_second")
LINE_METRICS = 8


def metrics_line(row: dict[str, Any]) -> str:
    """``step 12 · loss 1.234 · learning_rate 0.0005 · …``: one metrics row as a short log line."""
    nums = {k: v for k, v in row.items() if k not in ("step", "ts") and isinstance(v, (int, float))
            and not isinstance(v, bool)}
    keys = [k for k in _FIRST if k in nums] + sorted(k for k in nums if k not in _FIRST)
    parts = [f"{k} {nums[k]:.4g}" for k in keys[:LINE_METRICS]]
    return " · ".join([f"step {row.get('step', '?')}", *parts])


class RunDir:
    """Paths and writers of one run directory. Create with ``RunDir(paths.run_dir(run_id)).ensure()``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def ensure(self) -> RunDir:
        for d in (self.root, self.checkpoints, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        return self

    # ---- paths ---------------------------------------------------------------------------
    @property
    def spec_json(self) -> Path:
        return self.root / "spec.json"

    @property
    def replay_json(self) -> Path:
        return self.root / "replay.json"

    @property
    def metrics_jsonl(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary_json(self) -> Path:
        return self.root / "training_summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def final(self) -> Path:
        return self.root / "final"

    @property
    def pissa_init(self) -> Path:
        return self.root / "pissa_init"

    @property
    def samples_before(self) -> Path:
        return self.root / "samples_before.json"

    @property
    def events_jsonl(self) -> Path:
        """Events written by rank 0 of a multi-process run, forwarded to the bus by the service."""
        return self.logs / "events.jsonl"

    @property
    def cancel_file(self) -> Path:
        """Created by the service to ask a multi-process run to stop."""
        return self.root / "CANCEL"

    # ---- json files ----------------------------------------------------------------------
    def write_json(self, name: str, data: Any) -> Path:
        path = self.root / name
        write_json_atomic(path, data)
        return path

    def read_json(self, name: str) -> Any | None:
        path = self.root / name
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    # ---- metrics -------------------------------------------------------------------------
    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one line; flushed so a crash loses at most the line being written. The row is also
        logged at INFO as one short line, so the run's ``logs/train.log`` shows training as it goes."""
        with self.metrics_jsonl.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, sort_keys=True, default=float) + "\n")
            f.flush()
        if log.isEnabledFor(logging.INFO):
            log.info("%s", metrics_line(row))

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every complete, decodable line of metrics.jsonl."""
        return list(self._metric_rows())

    def _metric_rows(self) -> Iterator[dict[str, Any]]:
        try:
            text = self.metrics_jsonl.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        for line in text.splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict):
                yield row

    def rewind_metrics(self, step: int) -> None:
        """Keep only rows at or before ``step`` (the checkpoint a resume starts from), rewriting atomically."""
        rows = [r for r in self._metric_rows() if int(r.get("step", 0)) <= step]
        tmp = self.metrics_jsonl.with_name(".metrics.jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_jsonl)

    # ---- checkpoints ---------------------------------------------------------------------
    def checkpoint_steps(self) -> list[int]:
        """Steps of the complete checkpoints, ascending."""
        if not self.checkpoints.exists():
            return []
        steps = []
        for p in self.checkpoints.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / "trainer_state.json").exists():
                steps.append(int(m.group(1)))
        return sorted(steps)

    def latest_checkpoint(self) -> Path | None:
        steps = self.checkpoint_steps()
        return self.checkpoints / f"checkpoint-{steps[-1]}" if steps else None

    def finalize_checkpoint(self, staged: Path) -> Path:
        """Move a checkpoint the Trainer finished writing under .staging into checkpoints/ atomically."""
        if not (staged / "trainer_state.json").exists():
            raise FileNotFoundError(f"{staged} is not a complete checkpoint (no trainer_state.json)")
        _fsync_tree(staged)
        target = self.checkpoints / staged.name
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        if target.exists():
            trash = self.checkpoints / f".trash-{staged.name}-{os.getpid()}"
            os.replace(target, trash)
            os.replace(staged, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staged, target)
        return target

    def prune_checkpoints(self, keep: int) -> list[Path]:
        """Delete all but the ``keep`` newest complete checkpoints; returns what was deleted."""
        steps = self.checkpoint_steps()
        gone = []
        for step in steps[:-keep] if keep > 0 else steps:
            p = self.checkpoints / f"checkpoint-{step}"
            # Rename first: a crash mid-delete must not leave a half-deleted dir that looks complete.
            trash = self.checkpoints / f".trash-checkpoint-{step}-{os.getpid()}"
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
            gone.append(p)
        return gone

    def clean_partial(self) -> None:
        """Remove leftovers of an interrupted attempt: staging area, half-deleted or half-exported dirs."""
        shutil.rmtree(self.staging, ignore_errors=True)
        if self.checkpoints.exists():
            for p in self.checkpoints.iterdir():
                if p.name.startswith(".trash-") or (CHECKPOINT_RE.match(p.name) and not (p / "trainer_state.json").exists()):
                    shutil.rmtree(p, ignore_errors=True)
        for p in self.root.iterdir():
            if p.name.endswith(".tmp") or ".tmp-" in p.name or p.name.startswith(".trash-"):
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def publish_dir(self, tmp: Path, final: Path) -> Path:
        """Rename a fully written export directory into place (replacing an older one)."""
        _fsync_tree(tmp)
        if final.exists():
            trash = final.with_name(f".trash-{final.name}-{os.getpid()}")
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        return final


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
