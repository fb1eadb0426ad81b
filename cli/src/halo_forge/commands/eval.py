"""``halo-forge eval``, ``halo-forge probe``, ``halo-forge bench passk`` and ``halo-forge runs cohort``.

Each queues a job on the eval service through the gateway, follows the run's events until it finishes
and prints the result. ``probe`` exits 2 when a task regressed by more than the tolerance.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import typer
from halo_common.errors import HaloError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()
bench_app = typer.Typer(help="Benchmarks: pass@k on code problems.", no_args_is_help=True)

#: A check may build lm-eval's task index on a cold eval service (tens of seconds on a small machine).
CHECK_TIMEOUT_S = 180.0


def _client() -> GatewayClient:
    return GatewayClient.from_env(timeout=CHECK_TIMEOUT_S)


def _tasks(values: list[str]) -> list[str]:
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


def wait_finished(client: GatewayClient, run_id: str, quiet: bool = False) -> dict[str, Any]:
    """Follow the run's events until ``finished``; returns the finished message."""
    for line in client.stream_lines(f"/api/v1/runs/{run_id}/events"):
        try:
            event = json.loads(line)
        except ValueError:
            continue
        kind, msg = event.get("type"), event.get("message") or {}
        if kind == "progressed" and not quiet:
            m = msg.get("metrics") or {}
            console.print(f"[dim]{msg.get('step')}/{msg.get('total_steps')} {m}[/]")
        elif kind == "finished":
            return dict(msg)
    raise HaloError(f"the event stream of {run_id} ended before the run finished")


def _submit_and_wait(path: str, body: dict[str, Any], what: str, as_json: bool) -> dict[str, Any]:
    client = _client()
    sub = client.post(path, body)
    if not as_json:
        console.print(f"queued {what} job {sub['job_id']} (run {sub['run_id']})")
    final = wait_finished(client, sub["run_id"], quiet=as_json)
    if final.get("state") != "succeeded":
        raise HaloError(f"{what} job {sub['job_id']} {final.get('state')}: {final.get('error') or 'no reason given'}")
    return {"job_id": sub["job_id"], "run_id": sub["run_id"], **(final.get("summary") or {})}


def _print_tasks(result: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for col in ("task", "metric", "value", "± stderr", "n"):
        table.add_column(col, justify="right" if col in ("value", "± stderr", "n") else "left")
    for task, t in result.get("tasks", {}).items():
        stderr = t.get("stderr")
        table.add_row(task, t["metric"], f"{t['value']:.4f}", "-" if stderr is None else f"{stderr:.4f}", str(t.get("n")))
    console.print(table)


def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local directory, run:<id>, or a served model id."),
    tasks: list[str] = typer.Option(["offline"], "--tasks", "-t", help="core | reasoning | code | "
                                    "instruction_following | knowledge | offline | any lm-eval task (comma or repeat)."),
    limit: float = typer.Option(None, "--limit", help="Documents per task."),
    num_fewshot: int = typer.Option(None, "--num-fewshot", help="Few-shot examples."),
    backend: str = typer.Option("hf", "--backend", help="hf | vllm | served."),
    adapter: str = typer.Option(None, "--adapter", help="PEFT adapter directory over the model."),
    batch_size: int = typer.Option(8, "--batch-size", help="lm-eval batch size."),
    chat: bool = typer.Option(False, "--chat-template", help="Apply the model's chat template."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not write results into the registry."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Evaluate a model with lm-evaluation-harness; results go to the run dir and the registry."""
    body = {"model": model, "tasks": _tasks(tasks), "limit": limit, "num_fewshot": num_fewshot, "backend": backend,
            "adapter": adapter, "batch_size": batch_size, "apply_chat_template": chat, "record": not no_record}
    result = _submit_and_wait("/api/v1/eval/jobs", body, "eval", as_json)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _print_tasks(result, f"{model} ({backend}, lm-eval {result.get('lm_eval_version')})")
    if result.get("recorded"):
        console.print(f"[dim]{result['recorded']} result(s) recorded on run {result.get('recorded_on')}; "
                      f"summary: {result.get('summary_path')}[/]")
    elif result.get("record_error"):
        console.print(f"[yellow]not recorded in the registry: {result['record_error']}[/]")


def probe_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model to probe (as for eval)."),
    tasks: list[str] = typer.Option(["offline"], "--tasks", "-t", help="Tasks (comma or repeat)."),
    baseline: str = typer.Option(None, "--baseline", help="lm_eval_summary.json, a run directory, or run:<id>."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="Allowed drop of a task's primary metric."),
    limit: int = typer.Option(100, "--limit", help="Documents per task."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """A short evaluation diffed against a baseline; exits 2 when a task regressed."""
    body = {"model": model, "tasks": _tasks(tasks), "baseline": baseline, "tolerance": tolerance, "limit": limit}
    result = _submit_and_wait("/api/v1/eval/probe", body, "probe", as_json)
    report = result.get("probe") or {}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _print_tasks(result, f"probe of {model}")
        for r in report.get("regressed", []):
            console.print(f"[red]regressed[/] {r['task']}: {r['metric']} {r['baseline']:.4f} -> {r['current']:.4f} "
                          f"({r['delta']:+.4f}, tolerance {tolerance})")
        for t in report.get("missing", []):
            console.print(f"[red]missing[/] {t}: in the baseline, not in this probe")
        if report.get("ok") and baseline:
            console.print(f"[green]no regression[/] beyond {tolerance} against {baseline}")
    if not report.get("ok", True):
        sys.exit(2)


@bench_app.command("passk")
def passk_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Model the rollout service samples from."),
    dataset: str = typer.Option("humaneval", "--dataset", help="humaneval | mbpp (needs a file) | FILE.jsonl."),
    n: int = typer.Option(10, "--n", help="Samples per problem."),
    k: str = typer.Option("1", "--k", help="ks, comma-separated (each <= n)."),
    temperature: float = typer.Option(0.8, "--temperature", help="Sampling temperature."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="Tokens per sample."),
    limit: int = typer.Option(None, "--limit", help="First N problems."),
    verifier: str = typer.Option(None, "--verifier", help="Verifier (default: humaneval / mbpp by row shape)."),
    completions: str = typer.Option(None, "--completions", help="JSONL {task_id, completion} to verify instead of "
                                    "sampling."),
    no_record: bool = typer.Option(False, "--no-record", help="Do not write results into the registry."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """pass@k (unbiased estimator) with the stage each sample reached, reported separately."""
    try:
        ks = [int(x) for x in k.split(",") if x.strip()]
    except ValueError:
        raise HaloError(f"--k must be comma-separated integers; got {k!r}") from None
    bad = [x for x in ks if x > n]
    if bad:
        raise HaloError(f"--k {bad[0]} is larger than --n {n}: pass@{bad[0]} needs at least {bad[0]} samples per problem")
    body = {"model": model, "dataset": dataset, "n": n, "k": ks, "temperature": temperature,
            "max_new_tokens": max_new_tokens, "limit": limit, "verifier": verifier, "completions_file": completions,
            "record": not no_record}
    result = _submit_and_wait("/api/v1/eval/passk", body, "pass@k", as_json)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{dataset}: {result['problems']} problems x n={result['n']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, v in result["pass_at"].items():
        table.add_row(f"[bold]{name}[/]", f"{v:.4f}")
    for stage, v in result["stage_rates"].items():
        table.add_row(f"[dim]samples {stage}[/]", f"[dim]{v:.4f}[/]")
    console.print(table)


def cohort_cmd(
    run_ids: list[str] = typer.Argument(..., help="Runs of the cohort."),
    tasks: list[str] = typer.Option(None, "--tasks", "-t", help="Tasks to show (comma or repeat)."),
    base: str = typer.Option(None, "--base", help="Run holding the base model's evaluation (before/after view)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Runs x tasks grid (best per task in bold green) and, with --base, each run's delta against the base."""
    client = _client()
    ids = list(run_ids) + ([base] if base and base not in run_ids else [])
    query: list[tuple[str, Any]] = [("ids", ",".join(ids))] + [("tasks", t) for t in _tasks(tasks or [])]
    grid = client.request("GET", "/api/v1/runs/grid", params=query)
    if as_json:
        print(json.dumps(grid, indent=2))
        return
    cells = {(c["run_id"], c["task"]): c for c in grid["cells"]}
    table = Table(title="cohort" + (f" vs base {base}" if base else ""))
    table.add_column("run")
    for t in grid["tasks"]:
        table.add_column(f"{t['task']}\n{t['metric']} {'↑' if t['higher_is_better'] else '↓'}", justify="right")
    for r in grid["runs"]:
        row = [r.get("name") or r["run_id"]]
        for t in grid["tasks"]:
            c = cells.get((r["run_id"], t["task"]))
            if c is None:
                row.append("-")
                continue
            text = f"{c['value']:.4f}"
            b = cells.get((base, t["task"])) if base and r["run_id"] != base else None
            if b is not None:
                d = c["value"] - b["value"]
                good = d >= 0 if t["higher_is_better"] else d <= 0
                text += f" [{'green' if good else 'red'}]({d:+.4f})[/]"
            row.append(f"[bold green]{text}[/]" if c.get("best") else text)
        table.add_row(*row)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("probe")(probe_cmd)
    app.add_typer(bench_app, name="bench")
    # `runs cohort` lives here (eval feeds the grid); the runs group is registered by commands/runs.py.
    from halo_forge.commands.runs import runs_app

    runs_app.command("cohort")(cohort_cmd)
