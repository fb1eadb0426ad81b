"""JSON Schema export of every registered model to ``docs/schemas/`` (one file per schema id).

``python -m halo_schemas.export docs/schemas`` writes them; ``--check`` exits 1 when the
committed export is stale (the test suite runs the check).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from halo_schemas.base import registered_schemas


def render_all() -> dict[str, str]:
    """schema file name -> JSON text, for every registered model."""
    out: dict[str, str] = {}
    for sid, model in registered_schemas().items():
        if sid.startswith(("halo.test.", "halo.bench.")):
            continue  # defined by tests and benchmarks, not shipped
        schema = model.model_json_schema()
        schema["$id"] = sid
        out[f"{sid}.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def stale_files(out_dir: Path) -> list[str]:
    """Names of schema files missing, different or extra in ``out_dir``."""
    want = render_all()
    have = {p.name for p in out_dir.glob("*.json")} if out_dir.exists() else set()
    bad = [n for n, text in want.items() if not (out_dir / n).exists() or (out_dir / n).read_text() != text]
    bad += sorted(have - set(want))
    return sorted(bad)


def write_all(out_dir: Path) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    want = render_all()
    for stale in set(p.name for p in out_dir.glob("*.json")) - set(want):
        (out_dir / stale).unlink()
    for name, text in want.items():
        (out_dir / name).write_text(text)
    return len(want)


def main(argv: list[str] | None = None) -> int:
    import halo_schemas.all  # noqa: F401  (imports every model so all are registered)

    args = list(sys.argv[1:] if argv is None else argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    out_dir = Path(args[0] if args else "docs/schemas")
    if check:
        bad = stale_files(out_dir)
        if bad:
            print(f"stale schema export in {out_dir}: {', '.join(bad)}; run `just schemas`", file=sys.stderr)
            return 1
        print(f"schema export in {out_dir} is up to date")
        return 0
    n = write_all(out_dir)
    print(f"wrote {n} schemas to {out_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
