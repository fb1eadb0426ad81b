"""Python harnesses forked from the warm sandbox's interpreter (``Workspace.run_python``): the child gets
exactly what a freshly started interpreter gets (uid, session, limits, environment, fds), cannot touch the
fork server, and the fork server recovers when it dies. Each check runs both ways: forked and exec'd."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator

import pytest
from halo_verifiers.sandbox import Mechanism, Sandbox, SandboxLimits
from halo_verifiers.toolchains import Toolchains

PY = Toolchains().get("python")
LIMITS = SandboxLimits(wall_s=10, memory_bytes=512 * 1024 * 1024)


@pytest.fixture(params=["forked", "exec"])
def run(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator:
    """run(code, limits) -> (ExecResult, Workspace): the code as ``prog.py``, one way or the other."""

    def go(code: str, limits: SandboxLimits = LIMITS, *, ws_hook=None):
        with sandbox.workspace() as ws:
            ws.write("prog.py", code)
            if request.param == "forked":
                res = ws.run_python(PY.exe or "python3", "prog.py", ["a1"], limits=limits, expose=PY.expose)
            else:
                res = ws.run([PY.exe or "python3", "-I", "prog.py", "a1"], limits=limits, expose=PY.expose)
            if ws_hook:
                ws_hook(ws)
            return res, ws

    go.mode = request.param  # type: ignore[attr-defined]
    return go


IDENTITY = r"""
import json, os, resource, signal, sys
status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
print(json.dumps({
    "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "nnp": status["NoNewPrivs"].strip(), "caps": status["CapEff"].strip(),
    "leader": os.getsid(0) == os.getpid(), "as": resource.getrlimit(resource.RLIMIT_AS)[0],
    "core": resource.getrlimit(resource.RLIMIT_CORE)[0], "env": sorted(os.environ), "cwd": os.getcwd(),
    "fds": sorted(int(f) for f in os.listdir("/proc/self/fd")), "argv": sys.argv, "name": __name__,
    "isolated": sys.flags.isolated, "path": sys.path,
    "sigpipe_ignored": signal.getsignal(signal.SIGPIPE) == signal.SIG_IGN,
    "parent": open(f"/proc/{os.getppid()}/cmdline", "rb").read().decode(errors="replace"),
}))
"""


EXPECTED_PATH = json.loads(__import__("subprocess").run([PY.exe or "python3", "-I", "-c", "import sys, json; print(json.dumps(sys.path))"],
                                                       capture_output=True, text=True, check=True).stdout)


def test_child_is_set_up_like_a_fresh_interpreter(run, sandbox: Sandbox) -> None:
    res, ws = run(IDENTITY)
    assert res.ok, res.err()
    got = json.loads(res.out().strip().splitlines()[-1])
    if ws.uid is not None:
        assert (got["uid"], got["euid"], got["gid"], got["groups"]) == (ws.uid, ws.uid, ws.uid, [])
        assert got["caps"] == "0000000000000000"
    assert got["nnp"] == "1" and got["leader"] and got["core"] == 0 and got["sigpipe_ignored"]
    assert got["as"] == 512 * 1024 * 1024
    assert got["env"] == sorted(sandbox.environment(ws, None))
    assert got["cwd"] == str(ws.path)
    assert str(ws.path) not in got["path"] and got["path"] == EXPECTED_PATH  # -I: no script directory
    assert got["fds"][:3] == [0, 1, 2] and len(got["fds"]) == 4  # + the one listing /proc/self/fd
    assert got["argv"] == ["prog.py", "a1"] and got["name"] == "__main__" and got["isolated"] == 1
    assert (".halo-pyzygote.py" in got["parent"]) == (run.mode == "forked" and sandbox.warm)


def test_exit_codes_signals_and_tracebacks(run) -> None:
    res, _ = run("import sys; print('out'); sys.exit(3)")
    assert res.returncode == 3 and res.out().strip() == "out"
    res, _ = run("raise ValueError('boom')")
    assert res.returncode == 1 and "ValueError: boom" in res.err()
    res, _ = run("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert res.signal == signal.SIGKILL


def test_limits_apply(run) -> None:
    res, _ = run("x = bytearray(1 << 30)")
    assert not res.ok and "MemoryError" in res.err()
    res, _ = run("while True: pass", SandboxLimits(wall_s=1.5, cpu_s=10))
    assert res.timed_out


def test_cannot_harm_the_fork_server_and_leaves_nothing_behind(run, sandbox: Sandbox) -> None:
    hostile = r"""
import os, signal, time, json
out = {}
for name, act in (("kill", lambda: os.kill(os.getppid(), signal.SIGKILL)),
                  ("mem", lambda: open(f"/proc/{os.getppid()}/mem", "rb").read(1))):
    try:
        act(); out[name] = "done"
    except OSError as e:
        out[name] = type(e).__name__
print(json.dumps(out), flush=True)
if os.fork() == 0:
    os.setsid(); time.sleep(60)
"""
    res, ws = run(hostile)
    assert res.ok, res.err()
    got = json.loads(res.out().strip().splitlines()[-1])
    if ws.uid is not None:
        assert got == {"kill": "PermissionError", "mem": "PermissionError"}
        from halo_verifiers.sandbox import processes_of_uid

        assert processes_of_uid(ws.uid) == []  # the daemon died with the workspace
    again, _ = run("print('still here')")
    assert again.ok and again.out().strip() == "still here"


def test_a_dead_fork_server_is_restarted(sandbox: Sandbox) -> None:
    import psutil

    def run(code: str):
        with sandbox.workspace() as ws:
            ws.write("prog.py", code)
            return ws.run_python(PY.exe or "python3", "prog.py", limits=LIMITS, expose=PY.expose), ws

    _, ws = run("pass")
    if ws.agent is None:
        return  # no warm sandbox (not root): there is no fork server to kill; run_python started the interpreter
    # only this sandbox's fork servers: descendants of its own warm sandboxes
    servers = [c for pid in sandbox.agent_pids() for c in psutil.Process(pid).children(recursive=True)
               if any(".halo-pyzygote.py" in a for a in c.cmdline())]
    assert servers
    for p in servers:
        os.kill(p.pid, signal.SIGKILL)
    res, _ = run("print('ok')")
    assert res.ok and res.out().strip() == "ok"


def test_workspace_without_a_warm_sandbox_starts_the_interpreter(tmp_path) -> None:
    sb = Sandbox(Mechanism.BWRAP, base_dir=tmp_path, expose=PY.expose, warm=False)
    try:
        sb.probe()
        with sb.workspace() as ws:
            ws.write("prog.py", "import sys; print(sys.argv)")
            res = ws.run_python(PY.exe or "python3", "prog.py", ["x"], limits=LIMITS, expose=PY.expose)
        assert res.ok and res.out().strip() == "['prog.py', 'x']"
    finally:
        sb.close()


def test_a_fork_server_that_cannot_serve_falls_back_to_starting_the_interpreter(tmp_path) -> None:
    sb = Sandbox(Mechanism.BWRAP, base_dir=tmp_path, expose=PY.expose)
    try:
        sb.probe()
        with sb.workspace() as ws:
            if ws.agent is None:
                return  # no warm sandbox (not root): nothing to fall back from
            ws.agent.zygote.write_text("raise SystemExit(0)\n")  # a fork server that exits at once
            ws.write("prog.py", "import sys; print(sys.argv)")
            res = ws.run_python(PY.exe or "python3", "prog.py", ["x"], limits=LIMITS, expose=PY.expose)
            assert res.ok and res.out().strip() == "['prog.py', 'x']"
            assert ws.agent.fork_python is False
    finally:
        sb.close()
