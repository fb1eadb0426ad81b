"""The search space over a training spec: validation, Optuna suggestions, nested paths, the grid.

::

    spec_cls = method_spec("sft")
    check_sweep(sweep)                                   # BadRequest naming the field, before any trial
    params = suggest(trial, sweep.search_space)          # {"learning_rate": 3e-4, "lora.rank": 8}
    trial_spec = apply(sweep.base, params)               # base with lora: {rank: 8} set, nested dicts created
    grid = grid_values(sweep.search_space)               # for the grid sampler: path -> every value
"""

from __future__ import annotations

import copy
import math
import types
import typing
from typing import Any

import optuna
from halo_common.errors import BadRequest
from halo_schemas.base import describe_validation_error
from halo_schemas.methods import TRAINING_JOB_SPECS
from halo_schemas.sweeps import SearchParam, SweepSpec
from halo_schemas.training import TrainSpecBase
from pydantic import BaseModel, ValidationError

#: Fields a sweep sets on every trial itself; searching over them would break the grouping or the objective.
RESERVED_PATHS = {"tags", "name", "progress_interval_s"}


def method_spec(method: str) -> type[TrainSpecBase]:
    """The spec class of a training method; BadRequest (``method``) naming the known ones."""
    cls = TRAINING_JOB_SPECS.get(method)
    if cls is None:
        raise BadRequest(f"unknown training method {method!r}; known: {', '.join(sorted(TRAINING_JOB_SPECS))}",
                         param="method")
    return cls


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """Pydantic model classes inside an annotation (``LoRASpec``, ``EarlyStoppingSpec | None``...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]
    return []


def _is_dict(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return any(_is_dict(a) for a in typing.get_args(annotation))
    return annotation is dict or typing.get_origin(annotation) is dict


def path_problem(spec_cls: type[BaseModel], path: str) -> str | None:
    """Why ``path`` (dotted) is not a field of ``spec_cls``, or None when it is."""
    model: type[BaseModel] | None = spec_cls
    parts = path.split(".")
    for i, part in enumerate(parts):
        if model is None:
            return None  # inside a free-form dict: any key
        field = model.model_fields.get(part)
        where = ".".join(parts[:i]) or spec_cls.__name__
        if field is None:
            known = ", ".join(sorted(model.model_fields))
            return f"{where} has no field {part!r} (fields: {known})"
        if i == len(parts) - 1:
            return None
        models = _models_in(field.annotation)
        if models:
            model = models[0]
        elif _is_dict(field.annotation):
            model = None
        else:
            return f"{'.'.join(parts[:i + 1])} is a value, not a section: {path!r} goes below it"
    return None


def set_path(spec: dict[str, Any], path: str, value: Any) -> None:
    """Set ``spec[a][b][c] = value`` for ``path`` ``a.b.c``, creating the sections that are missing."""
    parts = path.split(".")
    node = spec
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def apply(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` with every ``path -> value`` of ``params`` set."""
    spec = copy.deepcopy(base)
    for path, value in params.items():
        set_path(spec, path, value)
    return spec


def bounds(param: SearchParam) -> list[Any]:
    """The extreme values of a parameter (each choice of a categorical), used to validate the space."""
    if param.type == "categorical":
        return list(param.choices or [])
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return [int(param.low), int(param.high)]
    return [float(param.low), float(param.high)]


def check_sweep(sweep: SweepSpec) -> type[TrainSpecBase]:
    """Refuse a sweep that cannot run, naming the field: an unknown method, an invalid base spec, a search-space
    path the spec does not have, a value at a range's end (or a choice) the spec refuses, a grid that cannot be
    enumerated, an objective the method never reports. Returns the method's spec class."""
    from halo_sweeps.core.objective import check_objective, eval_target

    spec_cls = method_spec(sweep.method)
    try:
        spec_cls.model_validate(sweep.base)
    except ValidationError as exc:
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        raise BadRequest(describe_validation_error(exc, what=f"base {sweep.method} spec"),
                         param=".".join(["base", *map(str, first)])) from None
    for path, param in sweep.search_space.items():
        where = f"search_space.{path}"
        if path in RESERVED_PATHS:
            raise BadRequest(f"{where}: {path} is set by the sweep itself and cannot be searched", param=where)
        problem = path_problem(spec_cls, path)
        if problem:
            raise BadRequest(f"{where}: the {sweep.method} spec has no field {path!r}: {problem}", param=where)
        for value in bounds(param):
            try:
                spec_cls.model_validate(apply(sweep.base, {path: value}))
            except ValidationError as exc:
                raise BadRequest(f"{where}: value {value!r} is refused by the {sweep.method} spec: "
                                 + describe_validation_error(exc, what="trial spec").removeprefix(
                                     "invalid trial spec: "), param=where) from None
    if sweep.sampler == "grid":
        grid_values(sweep.search_space)
    check_objective(sweep.method, spec_cls.model_validate(sweep.base), sweep.objective)
    if eval_target(sweep.objective) is not None and sweep.pruning.kind != "none":
        raise BadRequest("pruning.kind: an eval objective has one value per trial (after it trained), no "
                         "intermediate values to prune on; use pruning: {kind: none}, or a run-event objective "
                         "(eval_loss) to prune", param="pruning.kind")
    return spec_cls


def grid_values(space: dict[str, SearchParam]) -> dict[str, list[Any]]:
    """Every value of each dimension, for the grid sampler. A float needs ``step`` (BadRequest naming it)."""
    grid: dict[str, list[Any]] = {}
    for path, p in space.items():
        where = f"search_space.{path}"
        if p.type == "categorical":
            grid[path] = list(p.choices or [])
        elif p.log:
            raise BadRequest(f"{where}: the grid sampler cannot enumerate a log range; list the values as a "
                             "categorical (choices) instead", param=f"{where}.log")
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            grid[path] = list(range(int(p.low), int(p.high) + 1, int(p.step or 1)))
        else:
            if p.step is None:
                raise BadRequest(f"{where}: the grid sampler needs a step for a float range", param=f"{where}.step")
            assert p.low is not None and p.high is not None
            n = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
            grid[path] = [round(p.low + i * p.step, 12) for i in range(n)]
    return grid


def grid_size(space: dict[str, SearchParam]) -> int:
    return math.prod(len(v) for v in grid_values(space).values())


def suggest(trial: optuna.Trial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """Ask ``trial`` for a value of every dimension; Optuna's parameter names are the spec paths."""
    params: dict[str, Any] = {}
    for path, p in space.items():
        if p.type == "categorical":
            params[path] = trial.suggest_categorical(path, list(p.choices or []))
        elif p.type == "int":
            assert p.low is not None and p.high is not None
            params[path] = trial.suggest_int(path, int(p.low), int(p.high), log=p.log,
                                             step=int(p.step) if p.step else 1)
        else:
            assert p.low is not None and p.high is not None
            params[path] = trial.suggest_float(path, float(p.low), float(p.high), log=p.log, step=p.step)
    return params
