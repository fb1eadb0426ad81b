"""``python -m halo_data.local``: one data step, a recipe, or an inspection in this process, without a stack.

The CLI's ``--local`` runs this module as a subprocess (the CLI never imports a service package). It reads
``{"schema": <schema id>, "spec": {...}}`` (or ``{"inspect": {...}}``) as JSON on stdin and writes the summary
as JSON on stdout; a bad input exits 2 with one line on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from halo_common.errors import HaloError
from halo_schemas.base import model_for
from halo_schemas.data import RecipeSpec

from halo_data.core.common import DataError
from halo_data.core.inspect import inspect
from halo_data.core.steps import Plugins, run_recipe, run_step


def run(request: dict[str, Any]) -> dict[str, Any]:
    """The summary of the requested step, recipe or inspection."""
    if "inspect" in request:
        req = request["inspect"]
        return inspect(req["path"], text_key=req.get("text_key"), samples=req.get("samples", 3)).model_dump(mode="json")
    spec = model_for(request["schema"]).model_validate(request["spec"])
    if isinstance(spec, RecipeSpec):
        out_dir = Path(spec.output or "recipe-out").expanduser().absolute().parent
        results = run_recipe(spec, spec.input, out_dir / ".halo-recipe", Plugins())
        return {"steps": [r.summary() for r in results], **results[-1].summary()}
    out = spec.output or str(Path(spec.input).with_name(Path(spec.input).stem + f".{request['op']}.jsonl"))
    return run_step(spec, spec.input, out, Plugins(), text_key=spec.text_key).summary()


def main() -> int:
    try:
        result = run(json.loads(sys.stdin.read()))
    except (DataError, HaloError) as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
