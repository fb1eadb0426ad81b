"""Rollout jobs (JSONL output, resume after a crash) and the model cache (fresh weights after the
files on disk change)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from halo_common.errors import BadRequest, NotFound
from halo_rollout.core.cache import ModelCache
from halo_rollout.core.jobs import completed_lines, load_requests, run_rollout_job
from halo_sampling.backends.transformers_backend import TransformersBackend
from halo_schemas.rollout import RolloutJobSpec, SampleParams, SampleRequest
from transformers import AutoModelForCausalLM


@pytest.fixture(scope="module")
def backend(tiny_model_dir: Path) -> TransformersBackend:
    b = TransformersBackend(max_batch_size=16)
    b.load(str(tiny_model_dir))
    return b


def spec_for(model: Path, n_prompts: int = 7, **kw: object) -> RolloutJobSpec:
    return RolloutJobSpec(
        model=str(model), seed=3, chunk_size=3,
        params=SampleParams(n=2, temperature=1.0, max_new_tokens=6),
        requests=[SampleRequest(prompt=f"prompt number {i}") for i in range(n_prompts)], **kw,
    )


def test_job_writes_one_line_per_prompt_and_resumes_identically(
    tiny_model_dir: Path, backend: TransformersBackend, tmp_path: Path
) -> None:
    spec = spec_for(tiny_model_dir)
    out = tmp_path / "samples.jsonl"
    seen = []
    final = run_rollout_job(spec, backend, out, progress=lambda p: seen.append(p.done))
    assert seen == [3, 6, 7] and final.samples == 14
    lines = out.read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == list(range(7))
    assert all(len(json.loads(line)["completions"]) == 2 for line in lines)

    # A worker died after 4 lines, halfway through writing the 5th: the rerun keeps the 4 complete
    # lines, drops the torn one, and regenerates the rest with the same seeds.
    crashed = tmp_path / "crashed.jsonl"
    crashed.write_text("\n".join(lines[:4]) + "\n" + lines[4][:20])
    assert completed_lines(crashed) == 4 and crashed.read_text().endswith("\n")
    resumed = run_rollout_job(spec, backend, crashed)
    assert resumed.samples == 6
    again, first = [json.loads(x) for x in crashed.read_text().splitlines()], [json.loads(x) for x in lines]
    assert len(again) == 7
    for a, b in zip(again, first, strict=True):
        # Same seeds -> same tokens and texts; log-probs agree to float noise (other batch neighbours).
        assert a["seed"] == b["seed"]
        assert [(c["token_ids"], c["text"]) for c in a["completions"]] == [(c["token_ids"], c["text"]) for c in b["completions"]]
        assert [c["logprob_sum"] for c in a["completions"]] == pytest.approx([c["logprob_sum"] for c in b["completions"]])


def test_job_seeds_are_derived_per_prompt_and_explicit_seeds_win(tiny_model_dir: Path) -> None:
    spec = spec_for(tiny_model_dir, n_prompts=3)
    seeds = [r.params.seed for r in load_requests(spec)]
    assert len(set(seeds)) == 3 and seeds == [r.params.seed for r in load_requests(spec)]
    pinned = spec.model_copy(update={"requests": [SampleRequest(prompt="a", params=SampleParams(seed=99))]})
    assert load_requests(pinned)[0].params.seed == 99


def test_job_prompts_file_errors_name_file_and_line(tiny_model_dir: Path, backend: TransformersBackend,
                                                    tmp_path: Path) -> None:
    good = tmp_path / "p.jsonl"
    good.write_text('{"prompt": "a"}\n\n{"messages": [{"role": "user", "content": "b"}]}\n')
    spec = RolloutJobSpec(model=str(tiny_model_dir), prompts_file=str(good), params=SampleParams(max_new_tokens=3))
    assert run_rollout_job(spec, backend, tmp_path / "o.jsonl").done == 2
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"promt": "b"}\n')
    with pytest.raises(BadRequest, match=r"bad.jsonl:2: promt: unknown field"):
        run_rollout_job(spec.model_copy(update={"prompts_file": str(bad)}), backend, tmp_path / "o2.jsonl")
    with pytest.raises(NotFound):
        run_rollout_job(spec.model_copy(update={"prompts_file": str(tmp_path / "none.jsonl")}), backend,
                        tmp_path / "o3.jsonl")
    with pytest.raises(ValueError, match="requests .inline. or prompts_file"):
        RolloutJobSpec(model="m")


def test_cache_serves_rewritten_weights_never_stale_ones(tiny_model_dir: Path, tmp_path: Path) -> None:
    model_dir = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, model_dir)
    cache = ModelCache(capacity=2, factory=lambda name: TransformersBackend())
    entry, action = cache.get("transformers", str(model_dir))
    assert action == "loaded" and entry.backend.weights_version == 0
    assert cache.get("transformers", str(model_dir))[1] == "cached"
    req = [SampleRequest(prompt="hello", params=SampleParams(temperature=0, max_new_tokens=8))]
    before = entry.backend.generate(req)[0].completions[0].token_ids

    # The "trainer" writes new weights into the same directory.
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.copy_(torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)))
    model.save_pretrained(model_dir)
    entry2, action = cache.get("transformers", str(model_dir))
    assert action == "updated" and entry2.backend is entry.backend and entry.backend.weights_version == 1
    after = entry.backend.generate(req)[0].completions[0].token_ids
    fresh = TransformersBackend()
    fresh.load(str(model_dir))
    assert after == fresh.generate(req)[0].completions[0].token_ids != before
    ids = fresh.encode(req[0])
    np.testing.assert_allclose(entry.backend.next_token_logprobs(ids), fresh.next_token_logprobs(ids), atol=1e-6)

    # reload=True re-reads even unchanged files; the LRU evicts the oldest entry beyond capacity.
    assert cache.get("transformers", str(model_dir), reload=True)[1] == "updated"
    assert entry.backend.weights_version == 2
    cache.get("transformers", str(tiny_model_dir))
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    cache.get("transformers", str(other))
    assert len(cache) == 2 and all(str(model_dir) not in label for label in cache.labels())
    assert entry.backend.model is None  # evicted and closed


def test_cache_reapplies_a_rewritten_adapter(tiny_model_dir: Path, tmp_path: Path, adapter_factory) -> None:  # noqa: ANN001
    adapter = adapter_factory(tmp_path / "adapter", seed=1)
    cache = ModelCache(capacity=1, factory=lambda name: TransformersBackend())
    entry, _ = cache.get("transformers", str(tiny_model_dir), str(adapter))
    ids = entry.backend.encode(SampleRequest(prompt="hello"))
    lp1 = entry.backend.next_token_logprobs(ids)
    adapter_factory(tmp_path / "adapter", seed=2)  # the trainer saves its next adapter over the old one
    _, action = cache.get("transformers", str(tiny_model_dir), str(adapter))
    fresh = TransformersBackend()
    fresh.load(str(tiny_model_dir), str(adapter))
    assert action == "updated"
    np.testing.assert_allclose(entry.backend.next_token_logprobs(ids), fresh.next_token_logprobs(ids), atol=1e-6)
    assert not np.allclose(lp1, fresh.next_token_logprobs(ids), atol=1e-3)
