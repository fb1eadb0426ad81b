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
from halo_forge.commands.train import build_spec, follow_run, render_preview, train_app, training_command

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


# ---- commands: flags from the specs, plus the verifier flags ----------------------------------------
RL_OPTIONS: dict[str, tuple[Any, Any]] = {
    "verifier": (typer.Option(None, "--verifier", "-v", help="NAME[:WEIGHT] of a verifier (repeatable)."),
                 list[str] | None),
    "verifier_params": (typer.Option(None, "--verifier-params", help="NAME=JSON parameters of a verifier (repeatable)."),
                        list[str] | None),
}


def _submit_rl_command(method: str, flags: dict[str, Any], options: dict[str, Any]) -> None:
    spec = rl_spec(options["config"], flags, options["sets"], options["verifier"], options["verifier_params"])
    submit_rl(method, spec, detach=options["detach"], dry_run=options["dry_run"], samples=options["samples"])


for _method in ("grpo", "raft"):
    train_app.command(_method)(training_command(_method, _submit_rl_command, extra=RL_OPTIONS))


def register(app: typer.Typer) -> None:
    """Nothing to add at the top level: ``grpo`` and ``raft`` joined the ``train`` group on import."""
