import subprocess
import sys
from pathlib import Path

from halo_common.backend import detect_backend
from halo_forge.main import app
from transformers import AutoModelForCausalLM, AutoTokenizer
from typer.testing import CliRunner

runner = CliRunner()


def test_make_tiny_builds_a_loadable_model(tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    result = runner.invoke(app, ["models", "make-tiny", str(out), "--arch", "qwen2"])
    assert result.exit_code == 0, result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "qwen2" and tok.eos_token == "<|im_end|>"
    # A second build into the same non-empty dir is refused with one clear line.
    proc = subprocess.run([sys.executable, "-m", "halo_forge.main", "models", "make-tiny", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "error:" in proc.stderr and "Traceback" not in proc.stderr


def test_make_tiny_rejects_unknown_arch(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "make-tiny", str(tmp_path / "x"), "--arch", "gpt9"])
    assert result.exit_code != 0 and "gpt9" in str(result.exception or result.output)


def test_models_list_shows_catalog_with_backend_notes() -> None:
    result = runner.invoke(app, ["models", "list", "--family", "qwen", "--backend", "mlx"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "Qwen/Qwen2.5-0.5B-Instruct" in result.output and "Llama" not in result.output


def test_models_recommend_unknown_model_is_404() -> None:
    result = runner.invoke(app, ["models", "recommend", "nobody/nothing-7B", "--backend", "cpu", "--memory-gb", "16"])
    assert result.exit_code != 0
    assert getattr(result.exception, "code", None) == 404


def test_doctor_runs_and_reports_this_hosts_backend() -> None:
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert f"backend: {detect_backend()}" in result.output and "four_bit" in result.output
