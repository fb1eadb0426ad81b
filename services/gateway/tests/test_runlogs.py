"""A run's log tail: the reader (last N lines of a large file, missing file, bad id, links out of the run
directory) and ``GET /api/v1/runs/{id}/logs`` over HTTP with a tmp HALO_HOME, fed by the trainers' run_log."""

from __future__ import annotations

import logging
from pathlib import Path

import httpx
import pytest
from halo_bus import Bus
from halo_common.errors import BadRequest, NotFound
from halo_common.paths import HaloPaths
from halo_gateway.app import create_app
from halo_gateway.core.runlogs import run_log_tail, tail_lines
from halo_gateway.settings import GatewaySettings
from halo_training.runlog import run_log


def test_tail_of_a_large_file_reads_whole_last_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.log"
    path.write_text("".join(f"line {i} " + "x" * (i % 97) + "\n" for i in range(20_000)), encoding="utf-8")
    lines, size = tail_lines(path, 300, block=4096)  # many blocks, cut mid-line
    assert size == path.stat().st_size
    assert len(lines) == 300
    assert lines[0] == "line 19700 " + "x" * (19700 % 97) and lines[-1] == "line 19999 " + "x" * (19999 % 97)
    assert tail_lines(path, 5000)[0] == path.read_text().splitlines()[-5000:]
    short = tmp_path / "short.log"
    short.write_text("a\nb\nc", encoding="utf-8")  # no final newline; fewer lines than asked
    assert tail_lines(short, 10)[0] == ["a", "b", "c"]
    (tmp_path / "empty.log").write_bytes(b"")
    assert tail_lines(tmp_path / "empty.log", 10) == ([], 0)


def test_missing_log_bad_id_and_links_out_of_the_run_dir(tmp_path: Path) -> None:
    paths = HaloPaths(tmp_path / "home").ensure()
    with pytest.raises(NotFound, match="no run directory"):
        run_log_tail(paths, "nope", 10)
    (paths.runs_dir / "r1" / "logs").mkdir(parents=True)
    with pytest.raises(NotFound, match="no log yet"):
        run_log_tail(paths, "r1", 10)
    for bad in ("../etc", "a/b", ".."):
        with pytest.raises(BadRequest):
            run_log_tail(paths, bad, 10)
    secret = tmp_path / "secret.txt"
    secret.write_text("do not show\n", encoding="utf-8")
    (paths.runs_dir / "r1" / "logs" / "train.log").symlink_to(secret)
    with pytest.raises(NotFound, match="not a file in the run directory"):
        run_log_tail(paths, "r1", 10)


def test_run_log_appends_across_attempts_and_detaches(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r2"
    lg = logging.getLogger("halo_trainer_test.job")
    lg.setLevel(logging.INFO)
    root_handlers = list(logging.getLogger().handlers)
    with run_log(run_dir) as path:
        lg.info("first attempt step %d", 1)
        lg.debug("too chatty")
    lg.info("after the job")  # not in the file: the handler is gone
    assert logging.getLogger().handlers == root_handlers
    with run_log(run_dir):
        lg.warning("resumed")
    text = path.read_text(encoding="utf-8").splitlines()
    assert [t.split(": ", 1)[1] for t in text] == ["first attempt step 1", "resumed"]
    assert text[1].split(" ")[2] == "WARNING" and text[0][:2] == "20"  # timestamped


def test_metrics_rows_reach_the_run_log_as_short_lines(tmp_path: Path) -> None:
    from halo_training.rundir import RunDir

    run = RunDir(tmp_path / "runs" / "r3").ensure()
    with run_log(run.root) as path:  # whatever the root logger's level is
        run.append_metrics({"step": 3, "ts": 1.0, "loss": 1.23456, "learning_rate": 5e-4, "epoch": 0.5})
    run.append_metrics({"step": 4, "ts": 2.0, "loss": 1.0})  # outside the job: not in the file
    [line] = path.read_text(encoding="utf-8").splitlines()
    assert line.endswith("halo_training.metrics: step 3 · loss 1.235 · learning_rate 0.0005 · epoch 0.5")
    assert logging.getLogger("halo_training.metrics").level == logging.NOTSET  # set back after the job


def client(bus: Bus, home: Path) -> httpx.AsyncClient:
    app = create_app(bus, GatewaySettings(home=home))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_logs_route(memory_bus: Bus, tmp_path: Path) -> None:
    home = tmp_path / "home"
    paths = HaloPaths(home).ensure()
    lg = logging.getLogger("halo_trainer_test.route")
    lg.setLevel(logging.INFO)
    with run_log(paths.run_dir("run-a")):
        for i in range(50):
            lg.info("step %d loss %.3f", i, 1.0 / (i + 1))
    async with client(memory_bus, home) as c:
        r = await c.get("/api/v1/runs/run-a/logs", params={"lines": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["run_id"] == "run-a" and body["path"].endswith("runs/run-a/logs/train.log")
        assert [ln.split(": ", 1)[1] for ln in body["lines"]] == [f"step {i} loss {1.0 / (i + 1):.3f}"
                                                                  for i in range(45, 50)]
        assert body["size_bytes"] == (paths.run_dir("run-a") / "logs" / "train.log").stat().st_size
        assert len((await c.get("/api/v1/runs/run-a/logs")).json()["lines"]) == 50
        r = await c.get("/api/v1/runs/run-b/logs")
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        assert r.json()["error"]["param"] == "run_id"
        for lines in (0, 5001):
            r = await c.get("/api/v1/runs/run-a/logs", params={"lines": lines})
            assert r.status_code == 400 and r.json()["error"]["param"] == "lines"
        r = await c.get("/api/v1/runs/bad%20id/logs")
        assert r.status_code == 400 and r.json()["error"]["param"] == "run_id"
        spec = (await c.get("/openapi.json")).json()
        assert "/api/v1/runs/{run_id}/logs" in spec["paths"]
        assert spec["components"]["schemas"]["RunLogTail"]["properties"]["lines"]["description"]
