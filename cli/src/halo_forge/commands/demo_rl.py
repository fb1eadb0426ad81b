"""The RL stage of ``halo-forge demo``: verifier-grounded RL (RAFT or GRPO) on a task the tiny model learns
on CPU in seconds, through the running stack (trainer-torch + verifier-sandbox over the bus).

The task ("answer tags", bundled with trainer-torch as ``demo://rl_tags_train.jsonl`` and the held-out
``demo://rl_tags_heldout.jsonl``): the prompt ``tag:river`` asks for ``<answer>river</answer>``. The verifier
is ``regex_format`` with three patterns (starts with ``<answer>``, ends with ``</answer>``, exactly one tagged
word), so a completion earns partial credit per pattern. A short SFT warm-up gets the format partly right;
RL pushes it further, and the mean verifier reward on the 16 held-out prompts is printed before and after::

    from halo_forge.commands.demo_rl import run_rl_stage
    summary = run_rl_stage(client, sft_final_dir, method="raft")     # or method="grpo"
    summary["extras"]["eval_reward_before"], summary["extras"]["eval_reward_after"]
"""

from __future__ import annotations

from typing import Any

from halo_common.errors import HaloError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()

TAG_VERIFIER: dict[str, Any] = {
    "name": "regex_format",
    "params": {"patterns": ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]},
}
RL_DEMO_PROMPTS = ["tag:river", "tag:lemon", "tag:owl"]


def warmup_spec(model_path: str, steps: int = 40) -> dict[str, Any]:
    """A short SFT on the task: the format is partly right afterwards (sampled reward around 0.5)."""
    return {"name": "demo-rl-warmup", "tags": ["demo"], "model": model_path,
            "data": {"train": "demo://rl_tags_train.jsonl"}, "finetune": "full", "max_steps": steps, "batch_size": 8,
            "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "packing": False, "checkpoint_every_steps": 1000}


def rl_spec(method: str, model_path: str, *, cycles: int = 4, steps: int = 60) -> dict[str, Any]:
    """The RL job on the warmed-up model: RAFT (``cycles``) or GRPO (``steps``), rewards over the bus."""
    common = {"name": f"demo-{method}", "tags": ["demo"], "model": model_path,
              "data": {"train": "demo://rl_tags_train.jsonl", "eval": "demo://rl_tags_heldout.jsonl"},
              "verifiers": [TAG_VERIFIER], "verifier_transport": "bus", "finetune": "full", "num_generations": 8,
              "max_new_tokens": 24, "max_length": 64, "warmup_ratio": 0.0, "lr_scheduler": "constant",
              "eval_num_generations": 8, "sample_prompts": RL_DEMO_PROMPTS, "sample_max_new_tokens": 24}
    if method == "raft":
        return {**common, "cycles": cycles, "batch_size": 8, "learning_rate": 2e-3, "lr_decay": 0.7,
                "reward_threshold": 1.0, "keep_top_fraction": 1.0}
    if method == "grpo":
        return {**common, "max_steps": steps, "batch_size": 32, "learning_rate": 1e-3, "checkpoint_every_steps": 30}
    raise HaloError(f"unknown RL demo method {method!r}: use raft or grpo")


def _run(client: GatewayClient, method: str, spec: dict[str, Any], title: str) -> dict[str, Any]:
    from halo_forge.commands.train import follow_run

    console.rule(f"[bold]{title}")
    submitted = client.post(f"/api/v1/jobs/{method}", spec)
    console.print(f"job [bold]{submitted['job_id']}[/] · run {submitted['run_id']}")
    finished = follow_run(client, submitted["run_id"], job_id=submitted["job_id"], total=spec.get("max_steps"))
    if finished.get("state") != "succeeded":
        raise HaloError(f"demo {method} job {finished.get('state')}: {finished.get('error') or 'see halo-forge jobs show'}")
    return finished.get("summary") or {}


def reward_table(summary: dict[str, Any], method: str) -> Table:
    ex = summary.get("extras") or {}
    t = Table(title=f"{method.upper()}: mean verifier reward on {ex.get('eval_prompts')} held-out prompts", min_width=72)
    for col in ("", "before", "after"):
        t.add_column(col, justify="right" if col else "left")

    def f(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    t.add_row("reward (sampled, T=1)", f(ex.get("eval_reward_before")), f(ex.get("eval_reward_after")))
    t.add_row("pass rate", f(ex.get("eval_before_pass_rate")), f(ex.get("eval_after_pass_rate")))
    t.add_row("reward (greedy)", f(ex.get("eval_before_greedy_reward_mean")), f(ex.get("eval_after_greedy_reward_mean")))
    return t


def run_rl_stage(client: GatewayClient, model_path: str, *, method: str = "raft", warmup_steps: int = 40,
                 cycles: int = 4, steps: int = 60, step_label: str = "RL") -> dict[str, Any]:
    """SFT warm-up on the tag task from ``model_path`` (any causal model dir, e.g. the demo SFT's final/, or
    tiny://llama), then RAFT or GRPO with the regex_format verifier over the bus; prints the held-out reward
    before and after and returns the RL job's training summary."""
    warm = _run(client, "sft", warmup_spec(model_path, warmup_steps),
                f"{step_label} warm-up: SFT on 'tag:<word>' -> '<answer><word></answer>' ({warmup_steps} steps)")
    final = (warm.get("outputs") or {}).get("final")
    if not final:
        raise HaloError("the warm-up job wrote no final model; cannot continue with RL")
    what = f"{cycles} cycles" if method == "raft" else f"{steps} steps"
    summary = _run(client, method, rl_spec(method, final, cycles=cycles, steps=steps),
                   f"{step_label} {method.upper()} with the regex_format verifier over the bus ({what})")
    console.print(reward_table(summary, method))
    samples = (summary.get("extras") or {}).get("samples") or []
    for s in samples:
        console.print(f"  {s['prompt']!r}: {s['before']!r} -> {s['after']!r}")
    ex = summary.get("extras") or {}
    console.print(f"{method.upper()} held-out reward {ex.get('eval_reward_before', float('nan')):.3f} → "
                  f"{ex.get('eval_reward_after', float('nan')):.3f} ({summary.get('steps')} optimizer steps, "
                  f"{summary.get('duration_s', 0):.0f}s)")
    return summary
