"""What untrusted code can read: only the system's programs and libraries, the few /etc files the
toolchains need, a synthetic /etc/passwd, its toolchains and its workspace. Checked through the
service (a `custom` check and a Python program run by the `execution` verifier) and, per mechanism,
on the sandbox itself."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from halo_bus import InMemoryBus
from halo_clients.verifier_sandbox import VerifierClient
from halo_schemas.verifiers import IOCase, VerifierSpec, VerifyContext
from halo_verifier_sandbox.service import VerifierSandbox
from halo_verifier_sandbox.settings import VerifierSandboxSettings
from halo_verifiers.sandbox import DEFAULT_HIDE, ETC_VIEW, Mechanism, Sandbox, SandboxLimits, identity_files
from halo_verifiers.toolchains import Toolchains

PY = Toolchains().get("python")
SECRET = "halo-view-test-secret-6c1f"

# Reads what an attacker would want; prints one JSON object.
SNOOP = """
import json, os
def look(p):
    try:
        if os.path.isdir(p):
            return sorted(os.listdir(p))
        with open(p, errors="replace") as f:
            return f.read()
    except OSError as e:
        return "ERR " + str(e.errno)
def snoop(home):
    return {p: look(p) for p in ["/", "/etc", "/etc/passwd", "/etc/shadow", "/etc/hostname", "/root", "/var",
                                 home, os.path.join(home, "secret.txt")]}
"""


def host_only_passwd_lines() -> list[str]:
    """Lines of the real /etc/passwd that the synthetic one does not have (daemon, bin, users…)."""
    synthetic = set(identity_files(os.getuid(), os.getgid())[0].splitlines())
    lines = [ln for ln in Path("/etc/passwd").read_text().splitlines() if ln and ln not in synthetic]
    assert lines, "this host's /etc/passwd has nothing beyond root/nobody: the test could not tell"
    return lines


def assert_nothing_real(seen: dict[str, object], home: str, exposed_under_root: set[str]) -> None:
    dump = json.dumps(seen)
    for line in host_only_passwd_lines():
        assert line not in dump, f"real /etc/passwd line visible: {line!r}"
    assert SECRET not in dump
    assert str(seen["/etc/passwd"]).startswith("root:x:0:0:root:/nonexistent:")
    assert seen["/etc/shadow"] == "ERR 2" and seen["/etc/hostname"] == "ERR 2"
    assert seen[home] in ([], "ERR 2"), seen[home]  # HALO_HOME: empty (hidden) or absent
    assert seen[os.path.join(home, "secret.txt")] == "ERR 2"
    assert set(seen["/root"]) <= exposed_under_root, seen["/root"]  # toolchains only (e.g. ~/.rustup)
    allowed_etc = {"passwd", "group"} | {Path(p).name for p in ETC_VIEW if "*" not in p} | {
        n for n in os.listdir("/etc") if n.startswith("java-")}
    assert set(seen["/etc"]) <= allowed_etc, set(seen["/etc"]) - allowed_etc
    assert set(seen["/"]) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc", "dev", "proc", "tmp",
                              "var", "root", "home", "run", "mnt", "media", "srv", "work", "opt", "Users"} | {
        Path(p).parts[1] for p in PY.expose}


def _exposed_under_root(sb: Sandbox) -> set[str]:
    return {e.relative_to("/root").parts[0] for e in sb.expose if e.is_relative_to("/root") and e != Path("/root")}


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[VerifierSandbox, InMemoryBus]]:
    (tmp_path / "secret.txt").write_text(SECRET)
    bus = InMemoryBus()
    svc = VerifierSandbox(VerifierSandboxSettings(home=tmp_path, workers=1, plugins=False, cache_entries=0), bus)
    await svc.start()
    yield svc, bus
    await svc.stop()
    await bus.close()


async def test_custom_and_python_verifiers_read_nothing_real(service: tuple[VerifierSandbox, InMemoryBus],
                                                             tmp_path: Path) -> None:
    svc, bus = service
    client = VerifierClient(bus)
    home = str(tmp_path)
    sb = svc.engine.runtime.sandbox
    assert sb is not None and sb.mechanism in (Mechanism.BWRAP, Mechanism.UNSHARE)
    exposed = _exposed_under_root(sb)

    # A `custom` check returns what it read in its result details (as the report of #18 did).
    custom = SNOOP + f"\ndef verify(completion, context):\n    return {{'reward': 1.0, 'details': snoop({home!r})}}\n"
    r = await client.verify(VerifierSpec(name="custom", params={"source": custom}), "x", VerifyContext())
    assert r.error is None, r.error
    assert_nothing_real(r.details, home, exposed)
    assert SECRET not in json.dumps(r.model_dump(mode="json"))

    # A Python program under the `execution` verifier prints it to stdout (kept in the details).
    program = SNOOP + f"\nprint(json.dumps(snoop({home!r})))\n"
    ex = await client.verify("execution", f"```python\n{program}```",
                             VerifyContext(cases=[IOCase(stdin="", expected_output="nothing")]))
    out = ex.details["cases"][0]["stdout"]
    assert_nothing_real(json.loads(out), home, exposed)
    text = json.dumps(ex.model_dump(mode="json"))
    assert all(line not in text for line in host_only_passwd_lines()) and SECRET not in text


@pytest.fixture(scope="module", params=["bwrap", "unshare"])
def any_sb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(Mechanism(request.param), base_dir=tmp_path_factory.mktemp("view"), expose=PY.expose)
    sb.probe()
    yield sb
    sb.close()


def test_each_mechanism_builds_the_same_small_view(any_sb: Sandbox) -> None:
    with any_sb.workspace() as ws:
        ws.write("snoop.py", SNOOP + "\nprint(json.dumps(snoop('/nonexistent-home')))\n")
        res = ws.run([PY.exe or "python3", "-I", "snoop.py"], limits=SandboxLimits(wall_s=20))
        assert res.ok, res.err()
        seen = json.loads(res.out())
        assert_nothing_real(seen, "/nonexistent-home", _exposed_under_root(any_sb))
        # What the toolchains need is there: the loader cache, `cc` through /etc/alternatives.
        cc = ws.run(["sh", "-c", "test -s /etc/ld.so.cache && readlink -f \"$(command -v cc)\" && whoami"])
        assert cc.ok, cc.err()
        lines = cc.out().split()
        assert lines[0] == os.path.realpath("/usr/bin/cc") and lines[1] in ("sandbox", "root")
        # Nothing can be created anywhere but the workspace, not even in the view's own root.
        touch = ws.run(["sh", "-c", "for d in / /etc /tmp /dev; do touch $d/x 2>/dev/null && echo WROTE $d; done; "
                                    "touch ./mine && echo ok"])
        assert touch.out().split() == ["ok"], touch.out()


@pytest.mark.parametrize("mechanism", [Mechanism.BWRAP, Mechanism.UNSHARE])
def test_hidden_directory_inside_an_exposed_one_stays_empty(tmp_path: Path, mechanism: Mechanism) -> None:
    """HALO_HOME under a directory the sandbox shows (e.g. a repository with a venv) is still hidden."""
    shown = tmp_path / "project"
    home = shown / ".halo-home"
    home.mkdir(parents=True)
    (home / "secret.txt").write_text(SECRET)
    (shown / "lib.txt").write_text("public")
    sb = Sandbox(mechanism, base_dir=tmp_path / "ws", expose=[*PY.expose, shown], hide=[*DEFAULT_HIDE, home])
    try:
        sb.probe()
        with sb.workspace() as ws:
            res = ws.run(["sh", "-c", f"cat {shown}/lib.txt; ls -A {home}; cat {home}/secret.txt"])
        assert res.out() == "public" and SECRET not in res.out() + res.err()
    finally:
        sb.close()
