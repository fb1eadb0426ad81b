"""``halo-forge demo``: the main job end to end on the tiny-model kit, through the running stack.

1. starts (or reuses) the local stack (``halo_forge.stack.ensure_up``) unless ``HALO_GATEWAY_URL`` points at one;
2. SFT: teaches a random-weight tiny Llama a small bundled task (which sound each animal makes);
3. DPO (RPO loss, LoRA): on top of the SFT model, prefers enthusiastic answers ("moo!") over flat ones ("moo.");
4. prints what the model answered before training, after SFT and after DPO, with the key metrics;
5. eval: the base, SFT and DPO models on the built-in offline suite's ``halo_animals_mc`` (the demo task, chat
   template) and ``halo_arith_mc`` (something the demo never taught) through the eval service
   (lm-evaluation-harness), with the delta; the runs' results land in the registry (cohort grid);
6. serve: the DPO model through the OpenAI-compatible API, asked with the official ``openai`` SDK, streamed;
7. RL (``--rl raft``, the default, or ``grpo``; see :mod:`halo_forge.commands.demo_rl`): a warm-up SFT on the
   "answer tags" task (``tag:river`` -> ``<answer>river</answer>``), then RL rewarded by verifiers over the bus
   for the right answer (each record's expected answer) with partial credit for the format; prints the share
   of right answers before and after, and each sample answer marked right or wrong by the same verifiers.

Everything runs on CPU in one to two minutes on 2 cores.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from halo_common.errors import BadRequest, HaloError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient
from halo_forge.commands.demo_rl import run_rl_stage

console = Console()

DEMO_PROMPTS = [
    "What sound does a cow make?",
    "What does a lion say?",
    "What does a rooster say?",
    "What sound does a frog make?",
]


def sft_spec(epochs: float) -> dict[str, Any]:
    return {
        "name": "demo-sft", "tags": ["demo"], "model": "tiny://llama", "data": {"train": "demo://demo_sft.jsonl"},
        "finetune": "full", "epochs": epochs, "batch_size": 4, "max_length": 128, "learning_rate": 3e-3,
        "warmup_ratio": 0.05, "checkpoint_every_steps": 50, "sample_prompts": DEMO_PROMPTS,
    }


def dpo_spec(model_path: str, epochs: float) -> dict[str, Any]:
    return {
        "name": "demo-dpo", "tags": ["demo"], "model": model_path, "data": {"train": "demo://demo_prefs.jsonl"},
        "finetune": "lora", "loss_type": "rpo", "beta": 0.1, "epochs": epochs, "batch_size": 8, "max_length": 128,
        "learning_rate": 2e-3, "checkpoint_every_steps": 50, "sample_prompts": DEMO_PROMPTS,
    }


def gateway_url() -> str:
    """The stack to use: HALO_GATEWAY_URL when set, else the local stack (started if needed)."""
    url = os.environ.get("HALO_GATEWAY_URL")
    if url:
        return url
    try:
        from halo_forge.stack import ensure_up
    except ImportError as exc:  # pragma: no cover - the CLI always ships halo_forge.stack
        raise HaloError(f"cannot start the local stack: {exc}") from None
    with console.status("starting the local stack (nats-server + services)…"):
        return ensure_up()


def _run(client: GatewayClient, method: str, spec: dict[str, Any], title: str) -> dict[str, Any]:
    from halo_forge.commands.train import follow_run

    console.rule(f"[bold]{title}")
    submitted = client.post(f"/api/v1/jobs/{method}", spec)
    console.print(f"job [bold]{submitted['job_id']}[/] · run {submitted['run_id']}")
    finished = follow_run(client, submitted["run_id"], job_id=submitted["job_id"])
    if finished.get("state") != "succeeded":
        raise HaloError(f"demo {method} job {finished.get('state')}: {finished.get('error') or 'see halo-forge jobs show'}")
    return finished.get("summary") or {}


def comparison_table(sft: dict[str, Any], dpo: dict[str, Any] | None) -> Table:
    """prompt | base model | after SFT | after DPO, from the jobs' before/after samples."""
    table = Table(title="what the model answers", show_lines=True)
    table.add_column("prompt", style="bold")
    table.add_column("base model (random)", overflow="fold", style="dim")
    table.add_column("after SFT", overflow="fold")
    if dpo is not None:
        table.add_column("after DPO", overflow="fold", style="green")
    sft_samples = (sft.get("extras") or {}).get("samples") or []
    dpo_samples = ((dpo or {}).get("extras") or {}).get("samples") or []
    for i, s in enumerate(sft_samples):
        row = [s["prompt"], repr(s["before"])[1:-1][:60], s["after"]]
        if dpo is not None:
            row.append(dpo_samples[i]["after"] if i < len(dpo_samples) else "")
        table.add_row(*row)
    return table


def demo(
    sft_epochs: float = typer.Option(40, "--sft-epochs", help="SFT passes over the bundled task."),
    dpo_epochs: float = typer.Option(20, "--dpo-epochs", help="DPO passes over the preference pairs."),
    skip_dpo: bool = typer.Option(False, "--skip-dpo", help="Skip the DPO stage."),
    rl: str = typer.Option("raft", "--rl", help="RL stage with verifier-grounded rewards: raft | grpo | none."),
) -> None:
    """Run SFT, DPO and an RL stage (RAFT or GRPO, rewarded by a verifier over the bus) on the tiny model
    through the local stack, and compare answers and rewards before/after."""
    if rl not in ("raft", "grpo", "none"):
        raise BadRequest(f"--rl must be raft, grpo or none, got {rl!r}", param="rl")
    stages = 1 + (not skip_dpo) * 3 + (rl != "none")
    gateway_url()  # starts the local stack when HALO_GATEWAY_URL does not name one
    client = GatewayClient.from_env()
    sft = _run(client, "sft", sft_spec(sft_epochs),
               f"1/{stages} SFT: teach a random tiny Llama which animal makes which sound")
    final = (sft.get("outputs") or {}).get("final")
    if not final:
        raise HaloError("the SFT job wrote no final model; cannot continue")
    dpo = None
    if not skip_dpo:
        dpo = _run(client, "dpo", dpo_spec(final, dpo_epochs),
                   f"2/{stages} DPO (RPO loss, LoRA): prefer 'moo!' over 'moo.' on top of the SFT model")
    console.rule("[bold]before / after")
    console.print(comparison_table(sft, dpo))
    lines = [f"SFT loss {sft.get('loss_first', 0):.3f} → {sft.get('loss_last', 0):.3f} in {sft.get('steps')} steps "
             f"({sft.get('duration_s', 0):.0f}s)"]
    if dpo is not None:
        ex = dpo.get("extras") or {}
        lines.append(f"DPO loss {dpo.get('loss_first', 0):.3f} → {dpo.get('loss_last', 0):.3f} in {dpo.get('steps')} steps; "
                     f"reward accuracy {ex.get('reward_accuracy', float('nan')):.2f}, margin {ex.get('reward_margin', float('nan')):.2f}")
        lines.append(f"adapter: {(dpo.get('outputs') or {}).get('adapter')}")
    for line in lines:
        console.print(line)
    if dpo is not None:
        console.rule(f"[bold]3/{stages} eval: base vs SFT vs DPO on the offline suite (lm-evaluation-harness)")
        evaluate_models(client, [("base (random)", "tiny://llama"), ("after SFT", f"run:{sft['run_id']}"),
                                 ("after DPO", f"run:{dpo['run_id']}")])
        console.rule(f"[bold]4/{stages} serve: the DPO model through the OpenAI-compatible API, streamed")
        serve_and_ask(client, dpo, DEMO_PROMPTS[0])
    if rl != "none":
        console.rule(f"[bold]{stages}/{stages} {rl.upper()}")
        run_rl_stage(client, final, method=rl, step_label=f"{stages}/{stages}")


#: The demo's eval: the task it teaches and one it does not (the delta there should be noise, not a gain).
EVAL_TASKS = ["halo_animals_mc", "halo_arith_mc"]
EVAL_LIMIT = 40


def evaluate_models(client: GatewayClient, models: list[tuple[str, str]]) -> dict[str, dict[str, float]]:
    """Evaluate each ``(label, model)`` on :data:`EVAL_TASKS` as jobs on the eval service (the model's chat
    template on); print a task x model table with the last model's delta against the first. Returns
    label -> task -> primary metric."""
    from halo_forge.commands.eval import wait_finished

    scores: dict[str, dict[str, float]] = {}
    metric: dict[str, str] = {}
    for label, model in models:
        body = {"model": model, "tasks": EVAL_TASKS, "limit": EVAL_LIMIT, "batch_size": 16,
                "apply_chat_template": True, "record": model.startswith("run:")}
        sub = client.post("/api/v1/eval/jobs", body)
        console.print(f"eval job [bold]{sub['job_id']}[/] · {label}: {model}")
        final = wait_finished(client, sub["run_id"], quiet=True)
        if final.get("state") != "succeeded":
            raise HaloError(f"demo eval of {model} {final.get('state')}: {final.get('error') or 'no reason given'}")
        tasks = (final.get("summary") or {}).get("tasks") or {}
        scores[label] = {t: float(v["value"]) for t, v in tasks.items()}
        metric.update({t: v["metric"] for t, v in tasks.items()})
    first, last = models[0][0], models[-1][0]
    table = Table(title="lm-evaluation-harness, offline suite (chat template)")
    table.add_column("task", style="bold")
    table.add_column("metric")
    for label, _ in models:
        table.add_column(label, justify="right")
    table.add_column(f"Δ {last} − {first.split(' ')[0]}", justify="right", style="green")
    for task in EVAL_TASKS:
        values = [scores[label].get(task, float("nan")) for label, _ in models]
        table.add_row(task, metric.get(task, "?"), *(f"{v:.3f}" for v in values), f"{values[-1] - values[0]:+.3f}")
    console.print(table)
    return scores


def serve_and_ask(client: GatewayClient, run: dict[str, Any], prompt: str) -> str:
    """Serve a run's model (``run:<id>``: its adapter over its base) and ask ``prompt`` through the gateway's
    ``/v1`` with the official ``openai`` SDK, printing the reply as it streams. Returns the reply."""
    import openai

    run_id = run.get("run_id")
    if not run_id:
        raise HaloError("the DPO run reported no run id; cannot serve it")
    sdk = openai.OpenAI(base_url=f"{client.base_url}/v1", api_key=client.token or "local", max_retries=0,
                        timeout=300)
    model = f"run:{run_id}"
    console.print(f"[dim]openai.OpenAI(base_url={client.base_url}/v1).chat.completions.create(model={model!r}, "
                  "stream=True)[/]")
    console.print(f"[bold]user[/]: {prompt}")
    console.print("[bold]assistant[/]: ", end="")
    parts: list[str] = []
    try:
        stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                             max_tokens=24, temperature=0, stream=True)
        for chunk in stream:
            delta = chunk.choices[0].delta.content if chunk.choices else None
            if delta:
                parts.append(delta)
                console.print(delta, end="", highlight=False, markup=False)
    except openai.APIError as exc:
        console.print()
        raise HaloError(f"serving {model} failed: {exc}") from None
    console.print()
    return "".join(parts)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
