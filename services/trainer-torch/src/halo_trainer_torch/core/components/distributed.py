"""Multi-process hand-off: a spec with ``num_processes > 1`` is launched through ``accelerate launch`` with an
accelerate config generated from the spec (DDP, FSDP or DeepSpeed ZeRO), running
``python -m halo_trainer_torch.worker`` in every process.

The launching process (the service's worker thread) stays the job's owner:

* rank 0 writes events to ``logs/events.jsonl``; the launcher forwards them to the caller's reporter;
* a cancel or preemption is passed down by writing ``CANCEL`` in the run directory (all ranks agree on the
  stop step through an all-reduce, so no rank is left waiting in a collective);
* every rank checks that the launching process is alive (``HALO_SUPERVISOR_PID``) and stops if it died;
* the summary is the one rank 0 wrote; exit code 75 means "preempted, checkpoint written".

On CPU only DDP is possible (gloo); that is what the tests exercise with 2 processes.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

import yaml
from halo_common.backend import Backend, detect_backend
from halo_common.errors import Internal, Unprocessable
from halo_common.natsproc import free_port
from halo_schemas.training import TrainingSummary, TrainSpecBase

from halo_trainer_torch.core.components.hooks import JobControl, Reporter, replay_file_events
from halo_trainer_torch.core.components.rundir import RunDir

log = logging.getLogger("halo_trainer_torch.distributed")

EXIT_PREEMPTED = 75


def accelerate_config(spec: TrainSpecBase, *, mixed_precision: str, port: int) -> dict[str, Any]:
    """The accelerate config for ``spec`` (what ``accelerate config`` would write)."""
    cfg: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": spec.num_processes,
        "mixed_precision": mixed_precision,
        # CPU runs select gloo through TrainingArguments(use_cpu=True); the launcher itself is torchrun.
        "use_cpu": False,
        "main_training_function": "main",
        "rdzv_backend": "static",
        "same_network": True,
        "main_process_port": port,
        "downcast_bf16": "no",
    }
    if spec.distributed == "ddp":
        cfg["distributed_type"] = "MULTI_GPU"
    elif spec.distributed == "fsdp":
        cfg["distributed_type"] = "FSDP"
        cfg["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_reshard_after_forward": True,
            "fsdp_activation_checkpointing": False,
        }
    else:
        cfg["distributed_type"] = "DEEPSPEED"
        cfg["deepspeed_config"] = {
            "zero_stage": spec.deepspeed_stage,
            "gradient_accumulation_steps": spec.grad_accum,
            "gradient_clipping": spec.max_grad_norm,
            "offload_optimizer_device": "none",
            "offload_param_device": "none",
            "zero3_init_flag": spec.deepspeed_stage == 3,
            "zero3_save_16bit_model": spec.deepspeed_stage == 3,
        }
    return cfg


def check_distributed(spec: TrainSpecBase, backend: Backend | None = None) -> None:
    """Refuse combinations that cannot run here, before launching anything."""
    backend = backend or detect_backend()
    if backend in (Backend.MPS, Backend.MLX):
        raise Unprocessable(f"num_processes > 1 is not supported on backend '{backend}'", param="num_processes")
    if backend == Backend.CPU and spec.distributed != "ddp":
        raise Unprocessable(f"distributed={spec.distributed} needs CUDA/ROCm devices; on CPU use distributed=ddp "
                            "(gloo)", param="distributed")
    if spec.distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise Unprocessable("distributed=deepspeed needs the deepspeed package (pip install 'halo-trainer-torch[deepspeed]')",
                            param="distributed")
    if backend in (Backend.CUDA, Backend.ROCM):
        import torch

        count = torch.cuda.device_count()
        if spec.num_processes > count:
            raise Unprocessable(f"num_processes={spec.num_processes} but only {count} GPU(s) are visible",
                                param="num_processes")


def launch_distributed(method: str, spec: TrainSpecBase, run: RunDir, *, reporter: Reporter, control: JobControl,
                       run_id: str, job_id: str | None, attempt: int) -> TrainingSummary:
    """Run the job in ``spec.num_processes`` processes and return rank 0's summary.

    Raises :class:`~halo_trainer_torch.core.runner.Preempted` when the run stopped for preemption.
    """
    from halo_trainer_torch.core.components.model import resolve_settings
    from halo_trainer_torch.core.runner import Preempted

    check_distributed(spec)
    resolved = resolve_settings(spec)
    mp = "bf16" if resolved.bf16 else "fp16" if resolved.fp16 else "no"
    cfg_path = run.logs / "accelerate_config.yaml"
    cfg_path.write_text(yaml.safe_dump(accelerate_config(spec, mixed_precision=mp, port=free_port())))
    for stale in (run.events_jsonl, run.cancel_file, run.summary_json):
        stale.unlink(missing_ok=True)
    env = dict(os.environ)
    env["HALO_SUPERVISOR_PID"] = str(os.getpid())
    if resolved.use_cpu:
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // spec.num_processes)))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(cfg_path), "-m",
           "halo_trainer_torch.worker", "--method", method, "--run-dir", str(run.root), "--run-id", run_id,
           "--attempt", str(attempt)] + (["--job-id", job_id] if job_id else [])
    log_path = run.logs / "launch.log"
    with log_path.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    offset = 0
    asked: str | None = None
    asked_at = 0.0
    try:
        while proc.poll() is None:
            offset = replay_file_events(run.events_jsonl, offset, reporter)
            reason = control.stop_reason()
            if reason in ("cancelled", "preempted") and asked is None:
                asked, asked_at = reason, time.monotonic()
                run.cancel_file.write_text(reason)
            if asked is not None and time.monotonic() - asked_at > 300:
                os.killpg(proc.pid, signal.SIGKILL)  # a rank stuck in a collective never sees CANCEL
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(10)
    replay_file_events(run.events_jsonl, offset, reporter)
    if proc.returncode == EXIT_PREEMPTED:
        raise Preempted(f"run {run_id} preempted")
    data = run.read_json(run.summary_json.name)
    if data is None:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise Internal(f"distributed training exited with code {proc.returncode} without a summary; "
                       f"see {log_path}: ...{tail[-500:]}")
    return TrainingSummary.model_validate(data)
