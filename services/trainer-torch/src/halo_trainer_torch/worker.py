"""One process of a multi-process run, started by ``accelerate launch`` (see core/components/distributed.py).

``python -m halo_trainer_torch.worker --method sft --run-dir RUN`` reads the validated spec from
``RUN/spec.json`` and runs the recipe; rank 0 reports through ``RUN/logs/events.jsonl``. Exit code 75
means it was preempted after writing a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from halo_trainer_torch.core.components.distributed import EXIT_PREEMPTED
from halo_trainer_torch.core.components.hooks import FileReporter, JobControl, Reporter
from halo_trainer_torch.core.components.rundir import RunDir


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m halo_trainer_torch.worker")
    p.add_argument("--method", required=True)
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--run-id", default=None)
    p.add_argument("--job-id", default=None)
    p.add_argument("--attempt", type=int, default=1)
    args = p.parse_args(argv)

    from halo_trainer_torch.core.runner import Preempted, run_job

    run = RunDir(args.run_dir)
    spec = json.loads(run.spec_json.read_text())
    rank0 = int(os.environ.get("RANK", "0")) == 0
    reporter: Reporter = FileReporter(run.events_jsonl) if rank0 else Reporter()
    pid = os.environ.get("HALO_SUPERVISOR_PID")
    control = JobControl(cancel_file=run.cancel_file, supervisor_pid=int(pid) if pid else None)
    try:
        run_job(args.method, spec, run.root, reporter=reporter, control=control, run_id=args.run_id,
                job_id=args.job_id, attempt=args.attempt)
    except Preempted:
        return EXIT_PREEMPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
