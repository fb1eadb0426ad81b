"""``halo-forge doctor`` lists the features of installed services only, and names the installed services."""

from __future__ import annotations

from halo_forge import stack
from halo_forge.main import app
from typer.testing import CliRunner

runner = CliRunner()


def test_doctor_lists_only_installed_services() -> None:
    result = runner.invoke(app, ["doctor"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    installed = stack.available_services()
    assert "trainer-torch" in installed  # the precondition of the feature rows checked below
    out = " ".join(result.output.split())  # rich may wrap long lines
    assert f"services installed: {', '.join(installed)}" in out
    for svc in stack.SERVICE_ORDER:
        assert (f"({svc})" in out) == (svc in installed and svc in ("trainer-torch", "rollout", "serve", "trainer-mlx")), svc
    assert ("MLX training" in out) == ("trainer-mlx" in installed)
