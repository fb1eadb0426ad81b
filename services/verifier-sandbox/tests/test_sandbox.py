"""The sandbox for real: isolation, limits and cleanup under bubblewrap and unshare; fail-closed
detection and the explicit host opt-in."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from halo_verifiers.sandbox import (
    Mechanism,
    Sandbox,
    SandboxLimits,
    SandboxUnavailable,
    processes_of_uid,
)
from halo_verifiers.toolchains import Toolchains

PY = Toolchains().get("python")


def _make(mechanism: Mechanism, tmp_root: Path, launcher: bool = True) -> Sandbox:
    sb = Sandbox(mechanism, base_dir=tmp_root, expose=PY.expose)
    if not launcher:
        sb.launcher = None  # the warm agent forks itself instead of exec'ing halo-exec
    sb.probe()
    return sb


@pytest.fixture(scope="module", params=["bwrap", "bwrap-forking-agent", "unshare"])
def sb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    mechanism = Mechanism.UNSHARE if request.param == "unshare" else Mechanism.BWRAP
    sandbox = _make(mechanism, tmp_path_factory.mktemp("sbx"), launcher=request.param != "bwrap-forking-agent")
    if request.param.startswith("bwrap") and os.geteuid() == 0:
        assert sandbox.warm and (sandbox.launcher is not None) == (request.param == "bwrap")
    yield sandbox
    sandbox.close()


def py(sb: Sandbox, code: str, *, limits: SandboxLimits = SandboxLimits(wall_s=10), stdin: bytes = b"",
       args: tuple[str, ...] = ()):
    with sb.workspace() as ws:
        ws.write("prog.py", code)
        return ws.run([PY.exe or "python3", "-I", "prog.py", *args], stdin=stdin, limits=limits), ws


def survivors(marker: str) -> list[int]:
    """Pids of live processes whose command line carries ``marker`` (the host sees every sandboxed pid)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if marker in (proc.info["cmdline"] or []) and proc.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(proc.pid)
    return found


def test_runs_code_and_passes_stdin(sb: Sandbox) -> None:
    res, _ = py(sb, "import sys; print(sys.stdin.read().upper())", stdin=b"hello")
    assert res.ok and res.out() == "HELLO\n" and res.mechanism == sb.mechanism.value


def test_large_stdin_and_output_round_trip(sb: Sandbox) -> None:
    data = bytes(range(256)) * 12_000  # ~3 MB through the sandbox's pipes (and the warm agent's protocol)
    with sb.workspace() as ws:
        res = ws.run(["sha256sum"], stdin=data)
        echoed = ws.run(["cat"], stdin=data[:500_000])
    import hashlib

    assert res.ok and res.out().split()[0] == hashlib.sha256(data).hexdigest()
    assert echoed.ok and echoed.stdout == data[:500_000]


def test_no_network(sb: Sandbox) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.1)
    port = srv.getsockname()[1]
    got: list[int] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                srv.accept()[0].close()
                got.append(1)
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    res, _ = py(sb, f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint('connected')")
    stop.set()
    t.join()
    srv.close()
    assert not res.ok and "connected" not in res.out() and got == []
    # bwrap brings up a private loopback (refused); unshare leaves it down (unreachable)
    assert "Connection refused" in res.err() or "Network is unreachable" in res.err()
    ifaces, _ = py(sb, "print(open('/proc/net/dev').read())")
    assert [ln.split(":")[0].strip() for ln in ifaces.out().splitlines()[2:] if ":" in ln] == ["lo"]


def test_filesystem_is_read_only_except_the_workspace(sb: Sandbox, tmp_path: Path) -> None:
    outside = Path("/var/tmp") / f"halo-sbx-test-{os.getpid()}"
    code = f"""
import os
for p in ["/etc/halo-pwned", "/usr/halo-pwned", "{Path.cwd()}/halo-pwned", "{outside}", "/var/tmp/x"]:
    try:
        open(p, "w").write("x")
        print("WROTE", p)
    except OSError as e:
        print("denied", p, e.errno)
open("mine.txt", "w").write("ok")
print(open(os.path.join(os.environ["TMPDIR"], "mine.txt")).read())
"""
    res, ws = py(sb, code)
    assert res.ok, res.err()
    assert "WROTE" not in res.out() and res.out().count("denied") == 5 and res.out().endswith("ok\n")
    assert not outside.exists() and not (Path.cwd() / "halo-pwned").exists()
    assert not ws.path.exists()  # the workspace is removed afterwards


def test_private_tmp_and_hidden_home(sb: Sandbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    code = f"""
import os
for p in ["{secret}", "/root/.bash_history", "/root"]:
    print(p, os.path.exists(p) and (os.listdir(p) if os.path.isdir(p) else open(p).read()))
"""
    res, _ = py(sb, code)
    assert res.ok, res.err()
    assert "top secret" not in res.out()
    assert f"{secret} False" in res.out()


def test_environment_is_reduced(sb: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HALO_TEST_SECRET_TOKEN", "s3cret")
    res, ws = py(sb, "import os, json; print(json.dumps(dict(os.environ)))")
    import json

    env = json.loads(res.out())
    assert "HALO_TEST_SECRET_TOKEN" not in env and "s3cret" not in res.out()
    assert env["HOME"] == str(ws.path) and env["TMPDIR"] == str(ws.path)


def test_wall_timeout_kills_the_whole_group(sb: Sandbox) -> None:
    code = "import os, time\nfor _ in range(3):\n    os.fork() == 0 and time.sleep(1000)\ntime.sleep(1000)"
    start = time.monotonic()
    marker = f"halo-test-{uuid.uuid4().hex}"  # every forked child keeps it in its argv
    res, ws = py(sb, code, limits=SandboxLimits(wall_s=1.5, cpu_s=30), args=(marker,))
    assert res.timed_out and not res.ok and res.reason == "timeout (wall clock)"
    assert time.monotonic() - start < 10
    assert survivors(marker) == []
    assert (ws.uid is not None) == (os.geteuid() == 0), "a private uid exactly when the service runs as root"
    assert ws.uid is None or processes_of_uid(ws.uid) == []


def test_cpu_limit(sb: Sandbox) -> None:
    res, _ = py(sb, "while True: pass", limits=SandboxLimits(wall_s=20, cpu_s=1))
    assert not res.ok and not res.timed_out and res.signal in (signal.SIGXCPU, signal.SIGKILL)
    assert res.wall_s < 10


def test_memory_limit(sb: Sandbox) -> None:
    res, _ = py(sb, "x = bytearray(10 * 1024**3)\nprint('allocated')", limits=SandboxLimits(memory_bytes=512 * 2**20))
    assert not res.ok and "MemoryError" in res.err() and "allocated" not in res.out()


def test_process_limit(sb: Sandbox) -> None:
    code = """
import os, time
n = 0
try:
    while n < 500:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n, flush=True)
os._exit(0)
"""
    res, _ = py(sb, code, limits=SandboxLimits(wall_s=10, max_processes=20))
    assert res.ok, res.err()
    assert int(res.out()) < 20  # the fork that would exceed RLIMIT_NPROC failed


def test_output_limit(sb: Sandbox) -> None:
    res, _ = py(sb, "import sys\nwhile True: sys.stdout.write('x' * 65536)",
                limits=SandboxLimits(max_output_bytes=100_000, wall_s=10))
    assert res.output_exceeded and not res.ok and len(res.stdout) == 100_000 and res.wall_s < 5


def test_file_size_limit(sb: Sandbox) -> None:
    res, _ = py(sb, "open('big', 'wb').write(b'x' * 5_000_000)\nprint('done')",
                limits=SandboxLimits(max_file_bytes=1_000_000))
    assert not res.ok and "done" not in res.out()


def test_daemon_left_behind_is_killed(sb: Sandbox) -> None:
    code = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        time.sleep(1000)\n    os._exit(0)\nprint('bye')"
    start = time.monotonic()
    marker = f"halo-test-{uuid.uuid4().hex}"
    res, ws = py(sb, code, args=(marker,))
    assert res.ok and res.out() == "bye\n" and not res.timed_out
    assert time.monotonic() - start < 5
    assert survivors(marker) == [], "the daemon that escaped into its own session was killed too"
    assert ws.uid is None or processes_of_uid(ws.uid) == []


def test_uid_drop_when_root(sb: Sandbox) -> None:
    res, ws = py(sb, "import os; print(os.getuid(), os.geteuid(), os.getgroups())")
    assert res.ok
    # As root the code runs as a pooled private uid; otherwise as the service's own unprivileged uid.
    expected_uid = ws.uid if os.geteuid() == 0 else os.geteuid()
    assert res.out().split()[:2] == [str(expected_uid)] * 2
    assert os.geteuid() != 0 or ws.uid >= 2_900_000


# ---- detection: fail closed, explicit host opt-in --------------------------------------------


def test_fails_closed_without_a_mechanism(tmp_path: Path) -> None:
    missing = {"bwrap": "/nonexistent/bwrap", "unshare": "/nonexistent/unshare", "sandbox-exec": "/nonexistent/sx"}
    with pytest.raises(SandboxUnavailable) as err:
        Sandbox.detect(base_dir=tmp_path, tools=missing)
    assert "no sandbox mechanism available" in err.value.message and "apt-get install bubblewrap" in err.value.message
    assert "HALO_VERIFIER_SANDBOX_ALLOW_HOST" in err.value.message
    with pytest.raises(SandboxUnavailable, match="ALLOW_HOST"):
        Sandbox.detect("host", base_dir=tmp_path)


def test_host_execution_only_when_allowed(tmp_path: Path) -> None:
    missing = {"bwrap": "/nonexistent/bwrap", "unshare": "/nonexistent/unshare", "sandbox-exec": "/nonexistent/sx"}
    sb = Sandbox.detect(base_dir=tmp_path, tools=missing, allow_host=True, expose=PY.expose)
    assert sb.mechanism == Mechanism.HOST and "network" not in sb.isolation
    res, _ = py(sb, "import time; time.sleep(100)", limits=SandboxLimits(wall_s=1))
    assert res.timed_out  # limits still apply on the host
    res, _ = py(sb, "import os; print(os.environ.get('HOME'))")
    assert res.ok and str(tmp_path) in res.out()


def test_unknown_mechanism_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sandbox mechanism"):
        Sandbox.detect("chroot", base_dir=tmp_path)


def test_detect_picks_bwrap_here(tmp_path: Path) -> None:
    assert Sandbox.detect(base_dir=tmp_path).mechanism == Mechanism.BWRAP
    assert sys.platform == "linux"


@pytest.mark.skipif(os.geteuid() != 0, reason="warm sandboxes need a private uid (root)")
def test_warm_sandbox_is_clean_between_workspaces(tmp_path: Path) -> None:
    sb = Sandbox(Mechanism.BWRAP, base_dir=tmp_path, expose=PY.expose, uid_base=2_960_000, uid_count=1)
    try:
        assert sb.warm
        leave = """
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
print(libc.shmget(424242, 4096, 0o1000 | 0o600), flush=True)   # IPC_CREAT: a SysV segment that outlives us
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(1000)                                        # a daemon in its own session
    os._exit(0)
"""
        probe = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
others = [p for p in os.listdir('/proc') if p.isdigit() and os.stat('/proc/' + p).st_uid == os.getuid()
          and int(p) != os.getpid()]
print(libc.shmget(424242, 0, 0), others)
"""
        first, ws1 = py(sb, leave)
        assert first.ok and int(first.out().split()[0]) >= 0
        second, ws2 = py(sb, probe)
        assert ws1.uid == ws2.uid and ws1.agent is ws2.agent  # same warm sandbox, next verification
        assert second.out().strip() == "-1 []"  # segment removed, daemon killed
        pids = sb.agent_pids()
        assert len(pids) == 1
    finally:
        sb.close()
    assert sb.agent_pids() == [] and not any(tmp_path.glob("slot-*"))


@pytest.mark.skipif(os.geteuid() != 0, reason="warm sandboxes need a private uid (root)")
def test_slots_of_dead_services_are_removed(tmp_path: Path) -> None:
    dead = tmp_path / "slot-2900000-999999999-deadbeef"   # no such pid
    alive = tmp_path / f"slot-2900001-{os.getpid()}-cafef00d"
    for d in (dead, alive):
        d.mkdir()
        (d / ".halo-agent.py").write_text("")
    sb = Sandbox(Mechanism.BWRAP, base_dir=tmp_path, expose=PY.expose)
    try:
        assert not dead.exists() and alive.exists()
    finally:
        sb.close()
