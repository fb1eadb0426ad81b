"""llama.cpp backend: greedy tokens through the serve engine == llama-cpp-python's own generate;
logprobs vs prompt scoring; chat template; a served GGUF export answers like its HF source.

Needs llama-cpp-python, which ``scripts/dev setup`` builds and installs (so CI runs these); where it
is missing the module is skipped with a loud reason."""

from __future__ import annotations

import asyncio
import itertools
import warnings
from pathlib import Path

import pytest

try:
    import llama_cpp  # noqa: F401
except ImportError:
    _msg = "SKIPPING llama.cpp backend tests: llama-cpp-python is not installed (run scripts/dev setup)"
    warnings.warn(_msg, stacklevel=1)
    print("\n" + "!" * 8 + " " + _msg)
    pytest.skip(_msg, allow_module_level=True)

from halo_serve.core.backends import make_backend  # noqa: E402
from halo_serve.core.backends.base import GenerationRequest, ModelSource, SamplingParams  # noqa: E402
from halo_serve.core.convert.common import llama_cpp_dir  # noqa: E402
from halo_serve.core.convert.exporters import export_gguf  # noqa: E402
from halo_serve.core.convert.testing import confident_copy  # noqa: E402
from halo_serve.core.engine import Engine, GenerateInput  # noqa: E402
from halo_serve.core.models import ModelCatalog  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello there"}]
N = 24


@pytest.fixture(scope="module")
def gguf(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if llama_cpp_dir() is None:
        pytest.fail("llama.cpp's converter is not cached although llama-cpp-python is installed: run scripts/dev setup")
    root = tmp_path_factory.mktemp("gguf")
    src = confident_copy(tiny_model_dir, root / "src")
    return src, export_gguf(src, root / "tiny-f32.gguf", "fp32")


def _through_engine(path: Path, ids: list[int], n: int) -> list[int]:
    async def run() -> list[int]:
        catalog = ModelCatalog()
        catalog.register("g", str(path), format="gguf", backend="llamacpp")
        engine = Engine(catalog)
        engine.start()
        try:
            stream = await engine.generate(GenerateInput(model_id="g", prompt_ids=ids, params=SamplingParams(
                max_tokens=n, temperature=0, ignore_eos=True)))
            out: list[int] = []
            async for o in stream:
                out += o.token_ids
            return out
        finally:
            engine.shutdown()

    return asyncio.run(run())


def test_greedy_through_serve_equals_llama_cpp(gguf: tuple[Path, Path]) -> None:
    from llama_cpp import Llama

    _, path = gguf
    backend = make_backend("llamacpp")
    model = backend.load(ModelSource(str(path), format="gguf"))
    ids = backend.tokenize(model, backend.render_chat(model, MESSAGES), add_special_tokens=False)
    llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False)
    direct = [int(t) for t in itertools.islice(llm.generate(ids, temp=0.0, top_k=1, reset=True), N)]
    llm.close()
    served = _through_engine(path, ids, N)
    print(f"llama.cpp greedy: direct {direct} served {served}")
    assert served == direct
    assert len(set(direct)) > 1
    backend.unload(model)


def test_chat_template_and_tokens_match_hf(gguf: tuple[Path, Path]) -> None:
    from transformers import AutoTokenizer

    src, path = gguf
    backend = make_backend("llamacpp")
    model = backend.load(ModelSource(str(path), format="gguf"))
    hf = AutoTokenizer.from_pretrained(src)
    text = backend.render_chat(model, MESSAGES)
    assert text == hf.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert backend.tokenize(model, text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]
    assert model.eos_token_ids == frozenset({hf.eos_token_id})
    backend.unload(model)


def test_logprobs_seed_and_prompt_scoring(gguf: tuple[Path, Path]) -> None:
    _, path = gguf
    backend = make_backend("llamacpp")
    model = backend.load(ModelSource(str(path), format="gguf"))
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
        assert e.top_logprobs[0].token_id == e.token_id and e.logprob == pytest.approx(e.top_logprobs[0].logprob)
    a = [e.token_id for e in run(SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))]
    assert a == [e.token_id for e in run(SamplingParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True))]
    score = backend.score_prompt(model, ids + [evs[0].token_id], top_logprobs=2)
    assert score.logprobs[0] is None and score.logprobs[-1] == pytest.approx(evs[0].logprob, abs=1e-4)
    assert score.top_logprobs[-1][0].token_id == evs[0].token_id
    backend.unload(model)


def test_served_gguf_answers_like_its_hf_source(gguf: tuple[Path, Path]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, path = gguf
    tok = AutoTokenizer.from_pretrained(src)
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=True, return_dict=False)
    hf = AutoModelForCausalLM.from_pretrained(src)
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=N, min_new_tokens=N, do_sample=False, pad_token_id=0)
    assert _through_engine(path, list(ids), N) == ref[0, len(ids):].tolist()
