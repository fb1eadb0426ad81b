"""Print the local packages an image must install for one service, dependencies first.

Usage (in a Containerfile, from the build context = repository root)::

    python containers/local_deps.py services/trainer-torch [--with halo-models] [--extras vllm]

Prints ``libs/halo-common libs/halo-schemas ... services/trainer-torch``: the service plus the
transitive closure of its ``halo-*`` dependencies found under ``libs/`` (and ``services/``), each
as a path. Passing paths to pip means those names are never looked up on a package index — a
``halo-*`` dependency that is not in this repository is an error here, not a silent download of
someone else's package with the same name. ``--extras a,b`` installs the service with those
optional dependencies (``services/rollout[vllm]``); empty means none.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def local_packages(root: Path = ROOT) -> dict[str, Path]:
    """Normalised project name -> folder, for every pyproject under libs/ and services/."""
    out: dict[str, Path] = {}
    for pyproject in sorted([*root.glob("libs/*/pyproject.toml"), *root.glob("services/*/pyproject.toml")]):
        name = tomllib.loads(pyproject.read_text())["project"]["name"]
        out[_norm(name)] = pyproject.parent
    return out


def _deps(folder: Path) -> list[str]:
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    names = []
    for req in project.get("dependencies", []):
        m = _NAME.match(req)
        if m:
            names.append(_norm(m.group(1)))
    return names


def closure(service_dir: Path, extra: list[str] | None = None, root: Path = ROOT) -> list[Path]:
    """The service folder and every local package it needs, dependencies before dependents."""
    local = local_packages(root)
    order: list[Path] = []
    seen: set[Path] = set()

    def visit(folder: Path, chain: tuple[str, ...]) -> None:
        if folder in seen:
            return
        seen.add(folder)
        for dep in _deps(folder):
            if dep in local:
                visit(local[dep], (*chain, dep))
            elif dep.startswith("halo-"):
                raise SystemExit(f"{' -> '.join(chain)} needs {dep!r}, which is not a package in this repository")
        order.append(folder)

    for name in extra or []:
        if _norm(name) not in local:
            raise SystemExit(f"--with {name}: no such package under libs/ or services/")
        visit(local[_norm(name)], (_norm(name),))
    visit(service_dir.resolve(), (service_dir.name,))
    return order


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    service_dir = Path(argv[0])
    extra = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--with"]
    extras = ",".join(x for i, a in enumerate(argv[:-1]) if a == "--extras" for x in argv[i + 1].split(",") if x)
    if not (service_dir / "pyproject.toml").is_file():
        print(f"{service_dir}: no pyproject.toml (is SERVICE a folder under services/?)", file=sys.stderr)
        return 2
    root = Path.cwd().resolve()
    paths = [str(p.resolve().relative_to(root)) for p in closure(service_dir, extra, root=root)]
    if extras:
        paths[-1] += f"[{extras}]"
    print(" ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
