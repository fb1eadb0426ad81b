"""``halo-forge verify dry-run``:
the reward workbench.

Before training with RL, sample a few completions per prompt from the model, verify them, and look
at the rewards: their distribution, per-prompt spread, and warnings about signals GRPO/RAFT cannot
learn from (all zero, all equal, flat groups, reward correlated with length, verifier errors,
truncation). Nothing is trained; it costs one rollout RPC and one verify-batch RPC::

    halo-forge verify dry-run --model Qwen/Qwen2.5-0.5B-Instruct --prompts tasks.jsonl --verifier python_tests

Prompts file: ``.jsonl`` with one object per line — ``{"prompt": "..."}`` or ``{"messages": [...]}``,
plus an optional ``"context"`` object for the verifier (tests, reference, cases… as in
``halo.spec.verify-request``) — or ``.txt`` with one prompt per line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from halo_common.errors import BadRequest, NotFound, Unprocessable
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()

_LINE_KEYS = {"prompt", "messages", "context", "id"}


def read_prompts(path: Path, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` prompt records ``{"request": SampleRequest-dict, "context": dict, "preview": str}``;
    a bad line is a BadRequest naming ``file:line``."""
    if not path.is_file():
        raise NotFound(f"prompts file not found: {path}", param="prompts")
    out: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(out) >= limit:
                break
            if not line.strip():
                continue
            if path.suffix == ".txt":
                text = line.rstrip("\n")
                out.append({"request": {"prompt": text}, "context": {"prompt": text}, "preview": text})
                continue
            try:
                rec = json.loads(line)
            except ValueError as exc:
                raise BadRequest(f"{path}:{lineno}: not JSON ({exc.msg})", param="prompts") from None
            if not isinstance(rec, dict) or not ({"prompt", "messages"} & set(rec)):
                raise BadRequest(f"{path}:{lineno}: needs a 'prompt' or 'messages' field", param="prompts")
            unknown = sorted(set(rec) - _LINE_KEYS)
            if unknown:
                raise BadRequest(f"{path}:{lineno}: unknown field(s) {', '.join(unknown)}; allowed: "
                                 f"{', '.join(sorted(_LINE_KEYS))}", param="prompts")
            context = dict(rec.get("context") or {})
            if "prompt" in rec:
                request: dict[str, Any] = {"prompt": rec["prompt"]}
                context.setdefault("prompt", rec["prompt"])
                preview = rec["prompt"]
            else:
                request = {"messages": rec["messages"]}
                preview = next((m.get("content", "") for m in reversed(rec["messages"]) if m.get("role") == "user"), "")
            out.append({"request": request, "context": context, "preview": preview})
    if not out:
        raise BadRequest(f"{path}: no prompts found", param="prompts")
    return out


def dry_run(
    model: str = typer.Option(..., "--model", "-m", help="Base model: Hub id or local directory."),
    prompts: Path = typer.Option(..., "--prompts", "-p", help="Prompts file: .jsonl with prompt or messages, and an optional context; or .txt."),
    verifier: str = typer.Option(..., "--verifier", "-v", help="Verifier name (see `halo-forge verifiers list`)."),
    verifier_params: str = typer.Option("{}", "--verifier-params", help="Verifier parameters as a JSON object."),
    adapter: str = typer.Option(None, "--adapter", help="Adapter directory applied to the model."),
    num_prompts: int = typer.Option(8, "--num-prompts", min=1, help="Prompts taken from the file."),
    n: int = typer.Option(4, "--n", min=1, help="Completions sampled per prompt."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.0, help="Sampling temperature (0 = greedy)."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling threshold."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", min=1, help="Longest completion in tokens."),
    stop: list[str] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Sampling seed (same seed: same completions)."),
    backend: str = typer.Option("auto", "--backend", help="Rollout backend: auto | transformers | vllm | mlx."),
    show: int = typer.Option(1, "--show", min=0, help="Completions printed per prompt."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 when any degenerate-signal warning is raised."),
) -> None:
    """Sample completions, verify them, and show the reward distribution with degenerate-signal warnings."""
    try:
        from halo_sampling.workbench import PromptRewards, analyze_rewards
    except ImportError:  # pragma: no cover - depends on the installation
        raise Unprocessable("the reward workbench needs the halo-rollout package: pip install halo-rollout",
                            param="verifier") from None
    try:
        vparams = json.loads(verifier_params)
    except ValueError as exc:
        raise BadRequest(f"--verifier-params is not JSON: {exc.msg}", param="verifier_params") from None
    if not isinstance(vparams, dict):
        raise BadRequest("--verifier-params must be a JSON object", param="verifier_params")
    records = read_prompts(prompts, num_prompts)
    client = GatewayClient.from_env(timeout=900)
    params = {"n": n, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
              "stop": list(stop or []), "seed": seed}
    body = {"model": model, "adapter": adapter, "backend": backend, "params": params,
            "requests": [r["request"] for r in records]}
    with console.status(f"sampling {n} completions for {len(records)} prompts…"):
        rollout = client.post("/api/v1/rollout/generate", body)
    items = [
        {"id": f"{i}:{c['index']}", "completion": c["text"], "context": records[i]["context"]}
        for i, res in enumerate(rollout["results"]) for c in res["completions"]
    ]
    with console.status(f"verifying {len(items)} completions with {verifier}…"):
        verified = client.post("/api/v1/verify/batch", {"spec": {"name": verifier, "params": vparams}, "items": items})
    by_id = {it["id"]: r for it, r in zip(items, verified["results"], strict=True)}
    groups = []
    for i, res in enumerate(rollout["results"]):
        comps = res["completions"]
        vres = [by_id[f"{i}:{c['index']}"] for c in comps]
        groups.append(PromptRewards(
            prompt=records[i]["preview"],
            rewards=[float(v["reward"]) for v in vres],
            lengths=[c["num_tokens"] for c in comps],
            finish_reasons=[c["finish_reason"] for c in comps],
            errors=[v.get("error_type") or ("error" if v.get("error") else None) for v in vres],
            completions=[c["text"] for c in comps],
        ))
    report = analyze_rewards(groups)
    if as_json:
        print(json.dumps({"model": model, "adapter": adapter, "verifier": verifier,
                          "weights_version": rollout["weights_version"], **report.model_dump()}, indent=2))
    else:
        _print_report(report, groups, rollout, verifier, show)
    if strict and report.warnings:
        raise typer.Exit(1)


def _print_report(report: Any, groups: list[Any], rollout: dict[str, Any], verifier: str, show: int) -> None:
    table = Table(title=f"rewards from {verifier} ({rollout['backend']}, {rollout['num_samples']} samples)")
    for col in ("#", "prompt", "rewards", "mean", "std"):
        table.add_column(col, overflow="fold")
    for i, (g, s) in enumerate(zip(groups, report.prompts, strict=True)):
        table.add_row(str(i), _short(g.prompt, 60), " ".join(f"{r:.2f}" for r in g.rewards), f"{s.mean:.2f}",
                      f"{s.std:.2f}")
    console.print(table)
    if show:
        for i, g in enumerate(groups):
            for j, text in enumerate(g.completions[:show]):
                console.print(f"[dim]{i}.{j} reward {g.rewards[j]:.2f}, {g.lengths[j]} tokens:[/] {_short(text, 200)}")
    console.print(
        f"\nmean {report.mean:.3f}  std {report.std:.3f}  min {report.min:.3f}  max {report.max:.3f}  "
        f"zero {report.zero_fraction:.0%}  flat prompts {report.flat_group_fraction:.0%}  "
        f"truncated {report.truncated_fraction:.0%}  verifier errors {report.error_fraction:.0%}")
    corr = report.length_spearman
    console.print(f"reward~length: pearson {_fmt(report.length_pearson)}  spearman {_fmt(corr)}")
    top = max((b.count for b in report.histogram), default=1) or 1
    for b in report.histogram:
        console.print(f"  [{b.lo:5.2f}, {b.hi:5.2f}) {'█' * round(30 * b.count / top):<30} {b.count}")
    if report.warnings:
        for w in report.warnings:
            console.print(f"[bold yellow]warning[/] [yellow]{w.code}[/]: {escape(w.message)}")
    else:
        console.print("[green]no degenerate-signal warnings: the reward looks usable for RL[/]")


def _short(text: str, width: int) -> str:
    """One line, at most ``width`` characters, rich markup escaped (model output is arbitrary text)."""
    text = text.replace("\n", "⏎")
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.2f}"


def register(app: typer.Typer) -> None:
    """Mount ``dry-run`` under the ``verify`` group (verify.py registers first: module-name order)."""
    for group in app.registered_groups:
        if group.name == "verify" and group.typer_instance is not None:
            group.typer_instance.command("dry-run")(dry_run)
            return
    raise RuntimeError("the `verify` command group is missing; cannot mount `verify dry-run`")
