"""MLX backend: greedy tokens through the serve engine == mlx-lm's own stream_generate; logprobs,
prompt scoring, seeds; an MLX export and its HF source answer the same greedy prompt."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx_lm", reason="mlx-lm is not installed (requirements-dev installs it)")

from halo_serve.core.backends import make_backend  # noqa: E402
from halo_serve.core.backends.base import GenerationRequest, ModelSource, SamplingParams  # noqa: E402
from halo_serve.core.convert.exporters import export_mlx  # noqa: E402
from halo_serve.core.convert.testing import confident_copy  # noqa: E402
from halo_serve.core.engine import Engine, GenerateInput  # noqa: E402
from halo_serve.core.models import ModelCatalog  # noqa: E402

PROMPT = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
N = 24


@pytest.fixture(scope="module")
def mlx_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("mlx")
    src = confident_copy(tiny_model_dir, root / "src")
    return src, export_mlx(src, root / "mlx-fp32", "fp32")


def _direct(path: Path, ids: list[int], n: int) -> list[int]:
    from mlx_lm import load, stream_generate
    from mlx_lm.sample_utils import make_sampler

    model, tok = load(str(path))
    return [r.token for r in stream_generate(model, tok, prompt=ids, max_tokens=n, sampler=make_sampler(temp=0.0))][:n]


def _through_engine(path: Path, ids: list[int], n: int, fmt: str = "mlx", **params: object) -> list[int]:
    async def run() -> list[int]:
        catalog = ModelCatalog()
        catalog.register("m", str(path), format=fmt, backend="mlx")
        engine = Engine(catalog)
        engine.start()
        try:
            stream = await engine.generate(GenerateInput(model_id="m", prompt_ids=ids, params=SamplingParams(
                max_tokens=n, temperature=0, ignore_eos=True, **params)))
            out: list[int] = []
            async for o in stream:
                out += o.token_ids
            return out
        finally:
            engine.shutdown()

    return asyncio.run(run())


def test_greedy_through_serve_equals_mlx_lm(mlx_dirs: tuple[Path, Path]) -> None:
    _, mlx_dir = mlx_dirs
    backend = make_backend("mlx")
    model = backend.load(ModelSource(str(mlx_dir), format="mlx"))
    ids = backend.tokenize(model, PROMPT, add_special_tokens=False)
    direct = _direct(mlx_dir, ids, N)
    served = _through_engine(mlx_dir, ids, N)
    print(f"mlx greedy ({len(direct)} / {len(served)} tokens): direct {direct} served {served}")
    assert served == direct
    assert len(set(direct)) > 1  # not a degenerate repeat of one token


def test_session_logprobs_seed_and_scoring(mlx_dirs: tuple[Path, Path]) -> None:
    _, mlx_dir = mlx_dirs
    backend = make_backend("mlx")
    model = backend.load(ModelSource(str(mlx_dir), format="mlx"))
    ids = backend.tokenize(model, "The quick brown fox")

    def run(params: SamplingParams) -> list:
        s = backend.open_session(model)
        s.add(GenerationRequest("r", ids, params))
        evs = []
        while s.active and len(evs) < 8:
            evs += s.step()
        s.release("r")
        return evs

    evs = run(SamplingParams(max_tokens=8, temperature=0, logprobs=True, top_logprobs=3, ignore_eos=True))
    for e in evs:
        assert e.top_logprobs[0].token_id == e.token_id  # greedy picks the most likely token
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)
        assert e.logprob <= 0
    a = [e.token_id for e in run(SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True))]
    b = [e.token_id for e in run(SamplingParams(max_tokens=8, temperature=1.0, seed=7, ignore_eos=True))]
    assert a == b
    # Prompt scoring: entry i is log p(token_i | tokens_<i), equal to a teacher-forced session step.
    score = backend.score_prompt(model, ids + [evs[0].token_id], top_logprobs=2)
    assert score.logprobs[0] is None and len(score.logprobs) == len(ids) + 1
    assert score.logprobs[-1] == pytest.approx(evs[0].logprob, abs=1e-4)
    assert np.isfinite(score.logprobs[1:]).all()


def test_mlx_export_answers_like_its_hf_source(mlx_dirs: tuple[Path, Path]) -> None:
    src, mlx_dir = mlx_dirs
    backend = make_backend("mlx")
    model = backend.load(ModelSource(str(mlx_dir), format="mlx"))
    ids = backend.tokenize(model, PROMPT, add_special_tokens=False)
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(src)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
    assert _through_engine(mlx_dir, ids, N) == ref[0, len(ids):].tolist()
