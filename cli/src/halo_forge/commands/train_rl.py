"""``halo-forge train grpo|raft``: RL with verifier-grounded rewards, as durable jobs on the local stack.

::

    halo-forge train grpo --model ./sft/final --data tasks.jsonl --eval-data held_out.jsonl \\
        --verifier humaneval --verifier regex_format:0.2 --verifier-params 'regex_format={"pattern": "^```"}' \\
        --num-generations 8 --beta 0.04 --loss-type dapo --max-steps 200
    halo-forge train raft --model ./sft/final --data tasks.jsonl --verifier gcc --cycles 5 \\
        --reward-threshold 0.7 --keep-top-fraction 0.5 --curriculum progressive --shaping annealing

``--verifier NAME[:WEIGHT]`` (repeatable) names a verifier of verifier-sandbox and its weight in the reward
(the total is the weighted mean, each verifier's graduated reward kept as partial credit);
``--verifier-params NAME=JSON`` sets a verifier's parameters (NAME is its name or label). Everything else
works as for ``train sft``: ``--config FILE``, ``--set key=value``, ``--dry-run``, ``--detach``. The job's
progress streams live; at the end the mean verifier reward on the held-out prompts is shown before and after.

The commands attach to the ``train`` group of :mod:`halo_forge.commands.train` when this module is imported
(the CLI imports every command module).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest, HaloError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient
from halo_forge.commands.train import build_spec, follow_run, render_preview, train_app

console = Console()


def parse_verifier(value: str) -> dict[str, Any]:
    """``NAME`` or ``NAME:WEIGHT`` -> ``{"name", "weight"}`` (a VerifierRef)."""
    name, sep, weight = value.partition(":")
    name = name.strip()
    if not name:
        raise BadRequest(f"--verifier expects NAME[:WEIGHT], got {value!r}", param="verifier")
    ref: dict[str, Any] = {"name": name}
    if sep:
        try:
            ref["weight"] = float(weight)
        except ValueError:
            raise BadRequest(f"--verifier {value!r}: the weight must be a number", param="verifier") from None
    return ref


def apply_verifier_params(refs: list[dict[str, Any]], assignments: list[str]) -> None:
    """``NAME=JSON`` -> that verifier's params (NAME is the verifier's name or label)."""
    for a in assignments:
        key, sep, raw = a.partition("=")
        if not sep:
            raise BadRequest(f"--verifier-params expects NAME=JSON, got {a!r}", param="verifier_params")
        try:
            params = json.loads(raw)
        except ValueError as exc:
            raise BadRequest(f"--verifier-params {key}: not valid JSON ({exc})", param="verifier_params") from None
        if not isinstance(params, dict):
            raise BadRequest(f"--verifier-params {key}: must be a JSON object", param="verifier_params")
        hits = [r for r in refs if key.strip() in (r.get("name"), r.get("label"))]
        if not hits:
            raise BadRequest(f"--verifier-params {key}: no --verifier named {key!r}", param="verifier_params")
        for r in hits:
            r["params"] = {**(r.get("params") or {}), **params}


def rl_spec(config: Path | None, flags: dict[str, Any], sets: list[str] | None, verifiers: list[str] | None,
            verifier_params: list[str] | None) -> dict[str, Any]:
    """The job spec: config file < flags < ``--set``; ``--verifier`` flags replace the config's verifiers."""
    spec = build_spec(config, flags, sets)
    if verifiers:
        spec["verifiers"] = [parse_verifier(v) for v in verifiers]
    if verifier_params:
        refs = spec.get("verifiers")
        if not isinstance(refs, list):
            raise BadRequest("--verifier-params needs --verifier (or verifiers in the config)", param="verifier_params")
        apply_verifier_params(refs, verifier_params)
    if not spec.get("verifiers"):
        raise BadRequest("name at least one verifier: --verifier NAME[:WEIGHT] (see `halo-forge verifiers list`)",
                         param="verifiers")
    return spec


def print_rl_summary(finished: dict[str, Any]) -> None:
    """Held-out reward before/after, and RAFT's cycles."""
    ex = (finished.get("summary") or {}).get("extras") or {}
    if "eval_reward_before" not in ex:
        return
    where = "held-out" if ex.get("eval_on") == "eval" else "training"
    table = Table(title=f"mean verifier reward on {ex.get('eval_prompts')} {where} prompts", min_width=64)
    for col in ("", "before", "after"):
        table.add_column(col, justify="right" if col else "left")

    def fmt(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    table.add_row("reward (sampled)", fmt(ex.get("eval_reward_before")), fmt(ex.get("eval_reward_after")))
    table.add_row("pass rate", fmt(ex.get("eval_before_pass_rate")), fmt(ex.get("eval_after_pass_rate")))
    table.add_row("reward (greedy)", fmt(ex.get("eval_before_greedy_reward_mean")),
                  fmt(ex.get("eval_after_greedy_reward_mean")))
    for v in ex.get("verifiers") or []:
        label = v.get("label")
        table.add_row(f"  {label} (x{v.get('weight')})", fmt(ex.get(f"eval_before_reward_{label}_mean")),
                      fmt(ex.get(f"eval_after_reward_{label}_mean")))
    console.print(table)
    cycles = ex.get("cycles") or []
    if cycles:
        ct = Table(title="RAFT cycles")
        for col in ("cycle", "prompts", "samples", "reward", "pass", "kept", "threshold", "steps", "lr", "note"):
            ct.add_column(col)
        for c in cycles:
            ct.add_row(str(c.get("cycle")), str(c.get("prompts")), str(c.get("samples")), fmt(c.get("reward_mean")),
                       fmt(c.get("pass_rate")), str(c.get("kept")), fmt(c.get("threshold")), str(c.get("steps")),
                       f"{c['learning_rate']:.2e}" if c.get("learning_rate") else "-", c.get("why") or "")
        console.print(ct)


def submit_rl(method: str, spec: dict[str, Any], *, detach: bool, dry_run: bool, samples: int,
              client: GatewayClient | None = None) -> dict[str, Any] | None:
    """Queue the job (or dry-run it) and follow it to the end; returns the RunFinished message."""
    client = client or GatewayClient.from_env()
    if dry_run:
        result = client.request("POST", f"/api/v1/jobs/{method}/preview", json=spec, params={"samples": samples})
        render_preview(result)
        if not result.get("ok"):
            raise typer.Exit(1)
        return None
    submitted = client.post(f"/api/v1/jobs/{method}", spec)
    job_id, run_id = submitted["job_id"], submitted["run_id"]
    console.print(f"[green]queued[/] {method} job [bold]{job_id}[/] (run {run_id})")
    if detach:
        console.print(f"follow it with [bold]halo-forge jobs follow {job_id}[/]")
        return None
    finished = follow_run(client, run_id, job_id=job_id, total=spec.get("max_steps"))
    print_rl_summary(finished)
    if finished.get("state") != "succeeded":
        raise HaloError(f"job {job_id} {finished.get('state')}: {finished.get('error') or 'no reason given'}")
    return finished


# ---- options shared by both commands --------------------------------------------------------------
_MODEL = typer.Option(None, "--model", "-m", help="Policy to start from: Hub id, local HF directory (e.g. an SFT run's "
                      "final/), or tiny://llama.")
_DATA = typer.Option(None, "--data", "-d", help="Prompts: .jsonl with {prompt, context} (or messages) records.")
_CONFIG = typer.Option(None, "--config", "-c", help="Spec file (YAML or JSON); flags override it.")
_EVAL = typer.Option(None, "--eval-data", help="Held-out prompts: their mean reward is reported before and after.")
_EVAL_FRACTION = typer.Option(None, "--eval-fraction", help="Hold out this fraction of the prompts instead.")
_VERIFIER = typer.Option(None, "--verifier", "-v", help="NAME[:WEIGHT] of a verifier (repeatable).")
_VPARAMS = typer.Option(None, "--verifier-params", help="NAME=JSON parameters of a verifier (repeatable).")
_TRANSPORT = typer.Option(None, "--verifier-transport", help="bus (verifier-sandbox service, default) | local.")
_NGEN = typer.Option(None, "--num-generations", "-n", help="Completions sampled per prompt.")
_TEMP = typer.Option(None, "--temperature", help="Sampling temperature of the rollouts.")
_MAXNEW = typer.Option(None, "--max-new-tokens", help="Longest completion in tokens.")
_FINETUNE = typer.Option(None, "--finetune", help="full | lora | qlora | dora | rslora.")
_BS = typer.Option(None, "--batch-size", help="Per-device batch size (GRPO: completions per micro-batch).")
_GA = typer.Option(None, "--grad-accum", help="Gradient accumulation steps.")
_LR = typer.Option(None, "--lr", help="Peak learning rate.")
_MAXLEN = typer.Option(None, "--max-length", help="Maximum sequence length in tokens.")
_NAME = typer.Option(None, "--name", help="A name for the run.")
_SEED = typer.Option(None, "--seed", help="Random seed.")
_SET = typer.Option(None, "--set", help="Any spec field: --set lora.rank=32 (repeatable).")
_DETACH = typer.Option(False, "--detach", help="Return once the job is queued.")
_DRY = typer.Option(False, "--dry-run", help="Validate the prompts and show how they are rendered; do not train.")
_SAMPLES = typer.Option(1, "--samples", help="Prompts to render with --dry-run.")


def _flags(model: str | None, data: str | None, eval_data: str | None, eval_fraction: float | None,
           transport: str | None, num_generations: int | None, temperature: float | None, max_new_tokens: int | None,
           finetune: str | None, batch_size: int | None, grad_accum: int | None, lr: float | None,
           max_length: int | None, name: str | None, seed: int | None) -> dict[str, Any]:
    return {"model": model, "data": data, "eval_data": eval_data, "eval_fraction": eval_fraction,
            "verifier_transport": transport, "num_generations": num_generations, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "finetune": finetune, "batch_size": batch_size, "grad_accum": grad_accum,
            "learning_rate": lr, "max_length": max_length, "name": name, "seed": seed}


@train_app.command("grpo")
def train_grpo(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, verifier: list[str] = _VERIFIER, verifier_params: list[str] = _VPARAMS,
    verifier_transport: str = _TRANSPORT, num_generations: int = _NGEN, temperature: float = _TEMP,
    max_new_tokens: int = _MAXNEW, finetune: str = _FINETUNE, batch_size: int = _BS, grad_accum: int = _GA,
    lr: float = _LR, max_length: int = _MAXLEN, name: str = _NAME, seed: int = _SEED,
    max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps."),
    epochs: float = typer.Option(None, "--epochs", help="Passes over the prompts (when --max-steps is not set)."),
    loss_type: str = typer.Option(None, "--loss-type", help="grpo | dr_grpo | dapo | bnpo | cispo | sapo | luspo | vespo."),
    beta: float = typer.Option(None, "--beta", help="KL penalty against the starting model (0 = reference-free)."),
    epsilon: float = typer.Option(None, "--epsilon", help="Clipping epsilon (ratio within 1 +- epsilon)."),
    epsilon_high: float = typer.Option(None, "--epsilon-high", help="Upper clipping epsilon (DAPO clip-higher)."),
    scale_rewards: str = typer.Option(None, "--scale-rewards", help="group | batch | none (Dr. GRPO)."),
    generation: str = typer.Option(None, "--generation", help="rollout (Halo's backend, default) | trl."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """GRPO: group-relative advantages over sampled completions, rewards from verifiers."""
    flags = _flags(model, data, eval_data, eval_fraction, verifier_transport, num_generations, temperature,
                   max_new_tokens, finetune, batch_size, grad_accum, lr, max_length, name, seed)
    flags.update({"max_steps": max_steps, "epochs": epochs, "loss_type": loss_type, "beta": beta, "epsilon": epsilon,
                  "epsilon_high": epsilon_high, "scale_rewards": scale_rewards, "generation": generation})
    submit_rl("grpo", rl_spec(config, flags, sets, verifier, verifier_params), detach=detach, dry_run=dry_run,
              samples=samples)


@train_app.command("raft")
def train_raft(
    model: str = _MODEL, data: str = _DATA, config: Path = _CONFIG, eval_data: str = _EVAL,
    eval_fraction: float = _EVAL_FRACTION, verifier: list[str] = _VERIFIER, verifier_params: list[str] = _VPARAMS,
    verifier_transport: str = _TRANSPORT, num_generations: int = _NGEN, temperature: float = _TEMP,
    max_new_tokens: int = _MAXNEW, finetune: str = _FINETUNE, batch_size: int = _BS, grad_accum: int = _GA,
    lr: float = _LR, max_length: int = _MAXLEN, name: str = _NAME, seed: int = _SEED,
    cycles: int = typer.Option(None, "--cycles", help="RAFT cycles (generate -> verify -> select -> SFT)."),
    epochs: float = typer.Option(None, "--epochs", help="SFT passes over each cycle's kept samples."),
    reward_threshold: float = typer.Option(None, "--reward-threshold", help="Keep samples with at least this reward."),
    keep_top_fraction: float = typer.Option(None, "--keep-top-fraction", help="Keep this top fraction of the eligible."),
    lr_decay: float = typer.Option(None, "--lr-decay", help="Learning rate multiplier per cycle."),
    curriculum: str = typer.Option(None, "--curriculum", help="none | complexity | progressive | adaptive | historical."),
    shaping: str = typer.Option(None, "--shaping", help="fixed | annealing | warmup | adaptive."),
    allow_compile_only: bool = typer.Option(None, "--allow-compile-only/--no-compile-only",
                                            help="Accept compile-only successes as training samples."),
    sets: list[str] = _SET, detach: bool = _DETACH, dry_run: bool = _DRY, samples: int = _SAMPLES,
) -> None:
    """RAFT: rejection-sampling finetuning in cycles, keeping only verified samples."""
    flags = _flags(model, data, eval_data, eval_fraction, verifier_transport, num_generations, temperature,
                   max_new_tokens, finetune, batch_size, grad_accum, lr, max_length, name, seed)
    flags.update({"cycles": cycles, "epochs": epochs, "reward_threshold": reward_threshold,
                  "keep_top_fraction": keep_top_fraction, "lr_decay": lr_decay,
                  "allow_compile_only": allow_compile_only})
    spec = rl_spec(config, flags, sets, verifier, verifier_params)
    for key, value in (("curriculum", curriculum), ("shaping", shaping)):
        if value is not None:
            spec[key] = {**(spec.get(key) or {}), "strategy": value}
    submit_rl("raft", spec, detach=detach, dry_run=dry_run, samples=samples)


def register(app: typer.Typer) -> None:
    """Nothing to add at the top level: ``grpo`` and ``raft`` joined the ``train`` group on import."""
