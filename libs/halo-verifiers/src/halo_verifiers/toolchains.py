"""Find the compilers and interpreters the built-in verifiers need, with install hints.

Usage::

    tc = toolchains().get("gcc")
    if not tc.available:
        ...  tc.problem, tc.install_hint
    argv = [tc.exe, "main.c", ...]; env = tc.env; sandbox.add_expose(...) for tc.expose

Resolution happens outside the sandbox (trusted) and is cached per process. rustup proxies are
resolved to the real toolchain binaries (``rustc --print sysroot``) so the sandbox needs no
``~/.rustup`` state; directories under hidden paths (``/root``, ``/home``) are listed in
``expose`` so the sandbox binds them back read-only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

APT = "apt-get install -y"

#: name -> (executable candidates, Debian package, generic hint)
_SPECS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "gcc": (("gcc",), "gcc", "install GCC"),
    "g++": (("g++",), "g++", "install G++"),
    "clang": (("clang",), "clang", "install clang"),
    "clang++": (("clang++",), "clang", "install clang"),
    "mingw-gcc": (("x86_64-w64-mingw32-gcc",), "mingw-w64", "install the MinGW-w64 cross compiler"),
    "mingw-g++": (("x86_64-w64-mingw32-g++",), "mingw-w64", "install the MinGW-w64 cross compiler"),
    "rustc": (("rustc",), "rustc", "install Rust (rustup or your package manager)"),
    "cargo": (("cargo",), "cargo", "install Rust with cargo (rustup or your package manager)"),
    "go": (("go",), "golang-go", "install Go (https://go.dev/dl or your package manager)"),
    "python": ((), "python3", "Python is the service's own interpreter"),
    "pytest": ((), "python3-pytest", "pip install pytest into the service's environment"),
}


@dataclass(frozen=True)
class Toolchain:
    """A resolved tool: absolute ``exe``, ``version`` line, paths to expose and env to set."""

    name: str
    exe: str | None
    version: str | None = None
    expose: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    path_prepend: tuple[str, ...] = ()
    problem: str | None = None
    install_hint: str = ""

    @property
    def available(self) -> bool:
        return self.exe is not None and self.problem is None


def install_hint(name: str) -> str:
    """``apt-get install -y <pkg>`` (Debian/Ubuntu, as scripts/apt-packages.txt) plus a generic hint."""
    spec = _SPECS.get(name)
    if spec is None:
        return ""
    _, pkg, generic = spec
    if name == "pytest":
        return f"{generic} (or {APT} {pkg})"
    return f"{APT} {pkg} (Debian/Ubuntu); otherwise {generic}"


def _version(exe: str, args: tuple[str, ...] = ("--version",)) -> str | None:
    try:
        out = subprocess.run([exe, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0][:200] if text else None


def _python() -> Toolchain:
    exe = sys.executable
    expose = {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix),
              str(Path(os.path.realpath(exe)).parent.parent)}
    # Library directories only: not sys.path[0] / the working directory (a script's own folder).
    skip = {os.path.realpath(os.getcwd()), os.path.realpath(sys.path[0]) if sys.path and sys.path[0] else ""}
    for p in sys.path[1:]:
        if p and os.path.isdir(p) and os.path.realpath(p) not in skip:
            expose.add(os.path.realpath(p))
    return Toolchain("python", exe, sys.version.split()[0], tuple(sorted(expose)), install_hint=install_hint("python"))


def _resolve(name: str) -> Toolchain:
    if name == "python":
        return _python()
    if name == "pytest":
        py = _python()
        if importlib.util.find_spec("pytest") is None:
            return Toolchain("pytest", None, problem="pytest is not importable by the service's Python",
                             install_hint=install_hint("pytest"))
        import pytest

        return Toolchain("pytest", py.exe, pytest.__version__, py.expose, install_hint=install_hint("pytest"))
    cands, _pkg, _ = _SPECS[name]
    found = next((p for c in cands if (p := shutil.which(c))), None)
    hint = install_hint(name)
    if found is None:
        return Toolchain(name, None, problem=f"{cands[0]} not found on PATH", install_hint=hint)
    exe = found
    expose: list[str] = []
    env: dict[str, str] = {}
    prepend: list[str] = []
    if name in ("rustc", "cargo"):
        # rustup installs proxies that need ~/.rustup state; use the real toolchain binaries.
        rustc = shutil.which("rustc")
        sysroot = None
        if rustc:
            try:
                sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True,
                                         timeout=60).stdout.strip() or None
            except (OSError, subprocess.TimeoutExpired):
                sysroot = None
        if sysroot and Path(sysroot, "bin", name).exists():
            exe = str(Path(sysroot, "bin", name))
            expose.append(sysroot)
            prepend.append(str(Path(sysroot, "bin")))
            env["RUSTC"] = str(Path(sysroot, "bin", "rustc"))
        elif name == "cargo" and sysroot is None:
            return Toolchain(name, None, problem="cargo found but no working rustc", install_hint=install_hint("rustc"))
    real = os.path.realpath(exe)
    expose.append(str(Path(real).parent))
    if name == "go":
        env.update({"GO111MODULE": "off", "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "",
                    "CGO_ENABLED": "0", "GOTELEMETRY": "off"})
        try:
            goroot = subprocess.run([exe, "env", "GOROOT"], capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            goroot = ""
        if goroot:
            env["GOROOT"] = goroot
            expose.append(goroot)
        version = _version(exe, ("version",))
    else:
        version = _version(exe)
    if version is None:
        return Toolchain(name, None, problem=f"{exe} does not run", install_hint=hint)
    prepend.append(str(Path(exe).parent))
    return Toolchain(name, exe, version, tuple(dict.fromkeys(expose)), env, tuple(dict.fromkeys(prepend)),
                     install_hint=hint)


class Toolchains:
    """Per-process cache of resolved toolchains (resolution runs ``--version`` once per tool)."""

    def __init__(self, overrides: dict[str, Toolchain] | None = None) -> None:
        self._cache: dict[str, Toolchain] = dict(overrides or {})
        self._lock = threading.Lock()

    def get(self, name: str) -> Toolchain:
        with self._lock:
            tc = self._cache.get(name)
            if tc is None:
                tc = _resolve(name)
                self._cache[name] = tc
            return tc

    def set(self, tc: Toolchain) -> None:
        """Replace a toolchain (tests use this to simulate a missing compiler)."""
        with self._lock:
            self._cache[tc.name] = tc


def missing(name: str, why: str | None = None) -> Toolchain:
    """A toolchain entry that is not installed (for overrides and tests)."""
    return Toolchain(name, None, problem=why or f"{name} not found on PATH", install_hint=install_hint(name))
