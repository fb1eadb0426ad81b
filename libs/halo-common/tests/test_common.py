import importlib.util
import time

import pytest
from halo_common import HaloPaths, id_prefix, new_id
from halo_common.backend import Backend, capabilities, detect_backend, require
from halo_common.errors import BadRequest, HaloError, NotFound, Unprocessable
from halo_common.settings import ConfigError, HaloSettings, load_settings


def test_ids_are_prefixed_and_sort_by_time() -> None:
    a = new_id("run")
    time.sleep(0.002)
    b = new_id("run")
    assert a.startswith("run-") and len(a) == 30 and a < b
    assert id_prefix(b) == "run"
    with pytest.raises(ValueError):
        id_prefix("run_123")
    with pytest.raises(ValueError):
        new_id("Run")


def test_settings_error_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_NATS_URL", "localhost:4222")
    monkeypatch.setenv("HALO_LOG_LEVEL", "LOUD")
    with pytest.raises(ConfigError) as err:
        load_settings(HaloSettings)
    assert "HALO_NATS_URL" in str(err.value) and "HALO_LOG_LEVEL" in str(err.value)


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # noqa: ANN001
    monkeypatch.setenv("HALO_HOME", str(tmp_path))
    monkeypatch.setenv("HALO_NATS_URL", "nats://127.0.0.1:1234")
    s = load_settings(HaloSettings)
    assert s.home == tmp_path and s.nats_url == "nats://127.0.0.1:1234"
    assert s.paths.run_dir("run-1") == tmp_path / "runs" / "run-1"


def test_paths_refuse_traversal(tmp_path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError):
        HaloPaths(tmp_path).run_dir("../etc")
    p = HaloPaths(tmp_path / "home").ensure()
    assert p.runs_dir.is_dir() and p.verifiers_dir.is_dir() and p.logs_dir.is_dir()


def test_errors_carry_code_type_and_param() -> None:
    err = BadRequest("lora.rank: must be > 0", param="lora.rank")
    assert err.to_dict() == {"error": {"message": "lora.rank: must be > 0", "type": "invalid_request_error",
                                       "param": "lora.rank", "code": 400}}
    assert isinstance(HaloError.from_code(404, "x"), NotFound)
    odd = HaloError.from_code(418, "teapot")
    assert odd.code == 418 and type(odd) is HaloError


def _what_torch_sees() -> Backend:
    """This host's backend asked of torch (and the platform) directly: the expectation, on any machine."""
    import platform

    import torch

    if torch.cuda.is_available():
        return Backend.ROCM if torch.version.hip else Backend.CUDA
    if torch.backends.mps.is_available():
        return Backend.MPS
    if platform.system() == "Darwin" and platform.machine() == "arm64" and importlib.util.find_spec("mlx"):
        return Backend.MLX
    return Backend.CPU


def test_backend_detection_matches_this_host() -> None:
    # Detection must report what the host has, not guess: a CPU box says cpu, a GPU box its GPU.
    assert detect_backend() is _what_torch_sees()
    caps = capabilities()
    assert caps.backend is detect_backend()


def test_cpu_capability_row() -> None:
    caps = capabilities(Backend.CPU)
    assert caps.device_count == 0 and not caps.four_bit and not caps.vllm and not caps.flash_attn
    with pytest.raises(Unprocessable) as err:
        require("four_bit", Backend.CPU)
    assert err.value.param == "four_bit" and "cpu" in err.value.message and "lora" in err.value.message


def test_capability_matrix_rows_for_every_backend() -> None:
    for b in Backend:
        caps = capabilities(b)
        assert caps.backend is b
    assert capabilities(Backend.MPS).bf16 and not capabilities(Backend.MPS).four_bit
    with pytest.raises(ValueError):
        require("teleportation")
