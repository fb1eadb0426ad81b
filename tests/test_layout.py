"""The service skeleton holds for every service, no service imports another, no logic is copied between
services, and the scaffold makes a service that passes all of it from its first line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from halo_testing.layout import layout_problems, shared_blocks, skeleton_problems

ROOT = Path(__file__).resolve().parent.parent


def test_every_service_has_the_skeleton_and_imports_only_libraries() -> None:
    problems = layout_problems(ROOT)
    assert problems == [], "\n".join(problems)


def test_no_block_of_logic_is_shared_between_two_services() -> None:
    shared = shared_blocks(ROOT, min_lines=8)
    assert shared == [], "move these into a library:\n" + "\n".join(shared)


def _service(root: Path, name: str, body: str) -> None:
    src = root / "services" / name / "src" / f"halo_{name}"
    src.mkdir(parents=True)
    (root / "services" / name / "pyproject.toml").write_text(f'[project]\nname = "halo-{name}"\n')
    (src / "logic.py").write_text(textwrap.dedent(body))


def test_the_checks_catch_a_copied_block_and_a_cross_import(tmp_path: Path) -> None:
    (tmp_path / "libs").mkdir()
    (tmp_path / "cli" / "src").mkdir(parents=True)
    _service(tmp_path, "alpha", """
        def total(rows, key):
            out = {}
            for row in rows:
                value = row.get(key)
                if value is None:
                    continue
                out[value] = out.get(value, 0) + row["n"]
            best = max(out, key=out.get)
            return best, out[best], len(out)
        """)
    _service(tmp_path, "beta", """
        from halo_alpha.logic import total

        def tally(items, field):
            acc = {}
            for item in items:
                seen = item.get(field)
                if seen is None:
                    continue
                acc[seen] = acc.get(seen, 0) + item["count"]
            top = max(acc, key=acc.get)
            return top, acc[top], len(acc)
        """)
    shared = shared_blocks(tmp_path, min_lines=8)
    assert len(shared) == 1 and "alpha" in shared[0] and "beta" in shared[0], "renamed copies still match"
    problems = layout_problems(tmp_path)
    assert any("services/beta/src/halo_beta/logic.py imports halo_alpha" in p for p in problems), problems
    assert any(p.startswith("alpha: README.md missing") for p in problems)


def test_a_scaffolded_service_passes_the_layout_and_answers_health(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "new_service.py"), "scaffolded", "--root", str(tmp_path),
                    "--no-register", "--description", "a test service"], check=True, capture_output=True)
    assert skeleton_problems(tmp_path, "scaffolded") == []
    probe = textwrap.dedent(f"""
        import asyncio, sys
        import halo_bus.subjects as subjects, halo_clients
        subjects.SERVICES = (*subjects.SERVICES, "scaffolded")   # what the scaffold's registration does
        sys.path.insert(0, {str(tmp_path / "services" / "scaffolded" / "src")!r})
        halo_clients.__path__.append({str(tmp_path / "libs" / "halo-clients" / "src" / "halo_clients")!r})
        from halo_bus import InMemoryBus
        from halo_clients.scaffolded import ScaffoldedClient
        from halo_scaffolded.service import Scaffolded
        from halo_scaffolded.settings import ScaffoldedSettings

        async def main():
            bus = InMemoryBus()
            svc = Scaffolded(ScaffoldedSettings(), bus)
            await svc.start()
            health = await ScaffoldedClient(bus).health()
            await svc.stop()
            print(health.service, health.status)

        asyncio.run(main())
        """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["scaffolded", "ok"]


def test_the_scaffold_refuses_a_bad_name_and_an_existing_service(tmp_path: Path) -> None:
    bad = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_service.py"), "Bad_Name", "--root",
                          str(tmp_path), "--no-register"], capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid service name 'Bad_Name'" in bad.stderr
    taken = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_service.py"), "registry", "--root",
                            str(ROOT), "--no-register"], capture_output=True, text=True)
    assert taken.returncode == 2 and "already exists" in taken.stderr
