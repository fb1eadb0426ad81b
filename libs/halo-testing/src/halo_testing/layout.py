"""The service skeleton, checked: every ``services/<name>/`` has the same parts, and packages import across
service lines only through libraries.

``layout_problems(repo_root)`` returns one line per problem (empty = the tree is sound); ``tests/test_layout.py``
asserts it is empty, and the service scaffold (``scripts/new-service``) produces a service that passes it.

A service ``services/<name>/`` (module ``halo_<name with _>``) has:

* ``pyproject.toml`` naming the distribution ``halo-<name>``, and a ``README.md``;
* ``src/<module>/``: ``__init__.py``, ``__main__.py``, ``settings.py``, ``service.py``, ``metrics.py``, ``core/``
  (its logic, tested without NATS), and thin edges: ``handlers.py`` or ``routes/``;
* a typed client ``libs/halo-clients/src/halo_clients/<module suffix>.py`` (the gateway's client is the
  CLI's HTTP client and is exempt);
* ``tests/``.

No service package imports another service package, no library imports a service package, and the CLI
imports none either (it talks HTTP to the gateway, or runs ``python -m <service>``).
"""

from __future__ import annotations

import ast
from pathlib import Path

REQUIRED_FILES = ("__init__.py", "__main__.py", "settings.py", "service.py", "metrics.py")
#: Services whose client is not a bus client (the gateway is reached over HTTP).
NO_BUS_CLIENT = frozenset({"gateway"})


def service_module(name: str) -> str:
    """``trainer-torch`` -> ``halo_trainer_torch``."""
    return "halo_" + name.replace("-", "_")


def services(root: Path) -> list[str]:
    """Names of the services under ``root/services`` (directories with a pyproject.toml)."""
    return sorted(p.name for p in (root / "services").iterdir() if (p / "pyproject.toml").is_file())


def imported_modules(path: Path) -> set[str]:
    """Top-level module names ``path`` imports (absolute imports only; relative ones stay in the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def _sources(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "egg-info" not in p.parts)


def skeleton_problems(root: Path, name: str) -> list[str]:
    """What ``services/<name>`` lacks of the skeleton."""
    base = root / "services" / name
    module = service_module(name)
    package = base / "src" / module
    problems = []
    pyproject = base / "pyproject.toml"
    if f'name = "halo-{name}"' not in pyproject.read_text(encoding="utf-8"):
        problems.append(f"{name}: pyproject.toml must name the distribution halo-{name}")
    if not (base / "README.md").is_file():
        problems.append(f"{name}: README.md missing")
    if not (base / "tests").is_dir():
        problems.append(f"{name}: tests/ missing")
    if not package.is_dir():
        return [*problems, f"{name}: package src/{module}/ missing"]
    problems += [f"{name}: src/{module}/{f} missing" for f in REQUIRED_FILES if not (package / f).is_file()]
    if not (package / "core" / "__init__.py").is_file():
        problems.append(f"{name}: src/{module}/core/ missing (the service's logic, tested without NATS)")
    if not (package / "handlers.py").is_file() and not (package / "routes").is_dir():
        problems.append(f"{name}: src/{module}/handlers.py (or routes/) missing")
    client = root / "libs" / "halo-clients" / "src" / "halo_clients" / f"{module.removeprefix('halo_')}.py"
    if name not in NO_BUS_CLIENT and not client.is_file():
        problems.append(f"{name}: typed client {client.relative_to(root)} missing")
    return problems


def import_problems(root: Path) -> list[str]:
    """Imports that cross a service line: service -> other service, library -> service, CLI -> service."""
    service_modules = {service_module(n): n for n in services(root)}
    owners: list[tuple[str, Path]] = [(service_module(n), root / "services" / n / "src") for n in services(root)]
    owners += [("library " + p.name, p / "src") for p in sorted((root / "libs").iterdir()) if (p / "src").is_dir()]
    owners.append(("the CLI", root / "cli" / "src"))
    problems = []
    for owner, src in owners:
        for path in _sources(src):
            for module in sorted(imported_modules(path) & service_modules.keys()):
                if module != owner:
                    problems.append(f"{path.relative_to(root)} imports {module} (service {service_modules[module]}): "
                                    "go through halo_clients or a library")
    return problems


def layout_problems(root: Path) -> list[str]:
    """Every skeleton and import problem of the tree at ``root``."""
    problems = [p for name in services(root) for p in skeleton_problems(root, name)]
    return problems + import_problems(root)


# ---- code shared between services --------------------------------------------------------------------
def _shape_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, shape) of the code lines that carry logic: names become ``N``, strings ``S``, numbers
    ``0``; imports, docstrings and thin lines (a bracket, ``else:``, a lone name) are left out, so that only
    real logic can match."""
    import io
    import keyword
    import tokenize

    source = path.read_text(encoding="utf-8")
    skip: set[int] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            skip.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            skip.update(range(body[0].lineno, (body[0].end_lineno or body[0].lineno) + 1))
    shapes: dict[int, list[str]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.start[0] in skip or tok.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                                tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        if tok.type == tokenize.NAME:
            text = tok.string if keyword.iskeyword(tok.string) else "N"
        elif tok.type == tokenize.STRING or tok.type == getattr(tokenize, "FSTRING_START", -1):
            text = "S"
        elif tok.type == tokenize.NUMBER:
            text = "0"
        elif tok.type in (getattr(tokenize, "FSTRING_MIDDLE", -1), getattr(tokenize, "FSTRING_END", -1)):
            continue
        else:
            text = tok.string
        shapes.setdefault(tok.start[0], []).append(text)
    return [(n, " ".join(toks)) for n, toks in sorted(shapes.items()) if len(toks) > 3]


def shared_blocks(root: Path, min_lines: int = 8) -> list[str]:
    """Runs of ``min_lines`` or more logic lines of the same shape found in the sources of two different
    services (tests excluded), one line each: ``a.py:10 ~ b.py:40 (8 lines)``."""
    windows: dict[tuple[str, ...], tuple[str, Path, int]] = {}
    found: dict[tuple[Path, Path], tuple[int, int]] = {}
    for name in services(root):
        for path in _sources(root / "services" / name / "src"):
            lines = _shape_lines(path)
            for i in range(len(lines) - min_lines + 1):
                key = tuple(shape for _, shape in lines[i:i + min_lines])
                first = windows.setdefault(key, (name, path, lines[i][0]))
                if first[0] != name:
                    found.setdefault((first[1], path), (first[2], lines[i][0]))
    return [f"{a.relative_to(root)}:{la} ~ {b.relative_to(root)}:{lb} ({min_lines}+ lines of the same shape)"
            for (a, b), (la, lb) in sorted(found.items())]
