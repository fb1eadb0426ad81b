"""The RL stage of ``halo-forge demo``: verifier-grounded RL (RAFT or GRPO) on a task the tiny model learns
on CPU in seconds, through the running stack (trainer-torch + verifier-sandbox over the bus).

The task ("answer tags", bundled with trainer-torch as ``demo://rl_tags_train.jsonl``): the prompt ``tag:river``
asks for ``<answer>river</answer>``, and every record carries that expected answer as ``context.reference``.
The reward grades the **answer**, with partial credit for the format:

* ``answer`` (weight 3): ``rouge`` (ROUGE-2, no stemming) against the record's reference. ROUGE's tokenizer
  drops the brackets, so the reference's bigrams are (answer, river) and (river, answer): 1.0 only for the
  right word inside the tags, 0 for any other word. ``success_threshold: 1.0`` makes it pass only then;
* ``format`` (weight 1): ``regex_format`` with three patterns (starts with ``<answer>``, ends with
  ``</answer>``, exactly one tagged word) — a well-formed wrong answer scores 0.25 in total, never a pass.

A completion passes when both verifiers succeed, i.e. when it is exactly the expected answer. The warm-up
SFT (100 steps on the task) leaves the model answering some prompts right; RL then raises the share of right
answers. The pass rate and reward are measured on the task's 49 prompts (the prompts RL trains on): the
2-layer tiny model cannot learn to copy unseen words in a demo's budget, so a held-out set would stay at 0
(measured, see docs/rl.md)::

    from halo_forge.commands.demo_rl import run_rl_stage
    summary = run_rl_stage(client, sft_final_dir, method="raft")     # or method="grpo"
    summary["extras"]["eval_before_pass_rate"], summary["extras"]["eval_after_pass_rate"]
"""

from __future__ import annotations

from typing import Any

from halo_common.errors import HaloError
from rich.console import Console
from rich.table import Table

from halo_forge.client import GatewayClient

console = Console()

FORMAT_VERIFIER: dict[str, Any] = {
    "name": "regex_format", "label": "format", "weight": 1.0,
    "params": {"patterns": ["^<answer>", "</answer>$", "^<answer>[a-z]+</answer>$"]},
}
ANSWER_VERIFIER: dict[str, Any] = {
    "name": "rouge", "label": "answer", "weight": 3.0,
    "params": {"rouge_type": "rouge2", "use_stemmer": False, "success_threshold": 1.0},
}
TAG_VERIFIERS = [ANSWER_VERIFIER, FORMAT_VERIFIER]
TASK_DATA = "demo://rl_tags_train.jsonl"
#: Prompts answered greedily before and after RL, with the expected answer of their records in TASK_DATA.
RL_DEMO_SAMPLES = {"tag:river": "<answer>river</answer>", "tag:lemon": "<answer>lemon</answer>",
                   "tag:owl": "<answer>owl</answer>", "tag:moon": "<answer>moon</answer>"}
RL_DEMO_PROMPTS = list(RL_DEMO_SAMPLES)


def warmup_spec(model_path: str, steps: int = 100) -> dict[str, Any]:
    """SFT on the task: afterwards the format is right and some prompts are answered right (sampled pass rate
    around 0.2 on CPU)."""
    return {"name": "demo-rl-warmup", "tags": ["demo"], "model": model_path,
            "data": {"train": TASK_DATA}, "finetune": "full", "max_steps": steps, "batch_size": 8,
            "max_length": 64, "learning_rate": 3e-3, "warmup_ratio": 0.0, "lr_scheduler": "constant",
            "packing": False, "checkpoint_every_steps": 1000}


def rl_spec(method: str, model_path: str, *, cycles: int = 4, steps: int = 60) -> dict[str, Any]:
    """The RL job on the warmed-up model: RAFT (``cycles``) or GRPO (``steps``), rewards over the bus, measured
    on the task prompts before and after."""
    common = {"name": f"demo-{method}", "tags": ["demo"], "model": model_path,
              "data": {"train": TASK_DATA, "eval": TASK_DATA},
              "verifiers": TAG_VERIFIERS, "verifier_transport": "bus", "finetune": "full", "num_generations": 8,
              "max_new_tokens": 24, "max_length": 64, "warmup_ratio": 0.0, "lr_scheduler": "constant",
              "eval_num_generations": 8, "sample_prompts": RL_DEMO_PROMPTS, "sample_max_new_tokens": 24}
    if method == "raft":
        # Only exactly right answers are kept (threshold 1.0); three passes over them per cycle, since a cycle
        # keeps at most one distinct right answer per prompt.
        return {**common, "cycles": cycles, "epochs": 3, "batch_size": 8, "learning_rate": 2e-3, "lr_decay": 0.7,
                "reward_threshold": 1.0, "keep_top_fraction": 1.0}
    if method == "grpo":
        # 3e-4: at 1e-3 the policy drifts (greedy right answers fell 0.61 -> 0.43 while sampled ones barely rose).
        return {**common, "max_steps": steps, "batch_size": 32, "learning_rate": 3e-4, "checkpoint_every_steps": 30}
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


def _f(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) else "-"


def reward_table(summary: dict[str, Any], method: str) -> Table:
    """Before/after on the task prompts: the pass rate (exactly the expected answer), the answer and format
    rewards, the total, and the same for greedy decoding."""
    ex = summary.get("extras") or {}
    t = Table(title=f"{method.upper()} on the {ex.get('eval_prompts')} task prompts ({ex.get('eval_samples')} samples "
              "at T=1)", min_width=72)
    for col in ("", "before", "after"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("pass rate (right answer)", _f(ex.get("eval_before_pass_rate")), _f(ex.get("eval_after_pass_rate")))
    t.add_row("answer reward", _f(ex.get("eval_before_reward_answer_mean")), _f(ex.get("eval_after_reward_answer_mean")))
    t.add_row("format reward", _f(ex.get("eval_before_reward_format_mean")), _f(ex.get("eval_after_reward_format_mean")))
    t.add_row("total reward (3:1)", _f(ex.get("eval_reward_before")), _f(ex.get("eval_reward_after")))
    t.add_row("pass rate (greedy)", _f(ex.get("eval_before_greedy_pass_rate")), _f(ex.get("eval_after_greedy_pass_rate")))
    return t


def right_answers(client: GatewayClient, samples: list[dict[str, Any]], key: str) -> list[bool]:
    """Whether each sample's ``key`` ('before' / 'after') is the expected answer of its prompt, decided by the
    same verifiers over the gateway (a pass = every verifier succeeded, as in training)."""
    items = [{"id": str(i), "completion": s[key], "context": {"prompt": s["prompt"],
                                                              "reference": RL_DEMO_SAMPLES[s["prompt"]]}}
             for i, s in enumerate(samples)]
    ok = [True] * len(items)
    for v in TAG_VERIFIERS:
        res = client.post("/api/v1/verify/batch", {"spec": {"name": v["name"], "params": v["params"]},
                                                    "items": items})
        ok = [a and bool(r["success"]) for a, r in zip(ok, res["results"], strict=True)]
    return ok


def samples_table(client: GatewayClient, summary: dict[str, Any]) -> Table | None:
    """prompt | expected | before RL | after RL (greedy), each answer marked right or wrong by the verifiers."""
    samples = [s for s in (summary.get("extras") or {}).get("samples") or [] if s.get("prompt") in RL_DEMO_SAMPLES]
    if not samples:
        return None
    before, after = right_answers(client, samples, "before"), right_answers(client, samples, "after")
    t = Table(title="greedy answers before / after RL", show_lines=False)
    for col in ("prompt", "expected", "before RL", "after RL"):
        t.add_column(col)

    def mark(text: str, ok: bool) -> str:
        return f"[green]✓ right[/] {text}" if ok else f"[red]✗ wrong[/] {text}"

    for s, b, a in zip(samples, before, after, strict=True):
        t.add_row(s["prompt"], RL_DEMO_SAMPLES[s["prompt"]], mark(s["before"], b), mark(s["after"], a))
    return t


def run_rl_stage(client: GatewayClient, model_path: str, *, method: str = "raft", warmup_steps: int = 100,
                 cycles: int = 4, steps: int = 60, step_label: str = "RL") -> dict[str, Any]:
    """SFT warm-up on the tag task from ``model_path`` (any causal model dir, e.g. the demo SFT's final/, or
    tiny://llama), then RAFT or GRPO rewarded for the right answer (and its format) by verifiers over the bus;
    prints the pass rate and rewards before and after and returns the RL job's training summary."""
    warm = _run(client, "sft", warmup_spec(model_path, warmup_steps),
                f"{step_label} warm-up: SFT on 'tag:<word>' -> '<answer><word></answer>' ({warmup_steps} steps)")
    final = (warm.get("outputs") or {}).get("final")
    if not final:
        raise HaloError("the warm-up job wrote no final model; cannot continue with RL")
    what = f"{cycles} cycles" if method == "raft" else f"{steps} steps"
    summary = _run(client, method, rl_spec(method, final, cycles=cycles, steps=steps),
                   f"{step_label} {method.upper()} rewarded for the right answer (rouge vs the record's reference) "
                   f"+ format ({what})")
    console.print(reward_table(summary, method))
    table = samples_table(client, summary)
    if table is not None:
        console.print(table)
    ex = summary.get("extras") or {}
    console.print(f"{method.upper()} pass rate (right answer) {_f(ex.get('eval_before_pass_rate'))} → "
                  f"{_f(ex.get('eval_after_pass_rate'))}, reward {_f(ex.get('eval_reward_before'))} → "
                  f"{_f(ex.get('eval_reward_after'))} ({summary.get('steps')} optimizer steps, "
                  f"{summary.get('duration_s', 0):.0f}s)")
    return summary
