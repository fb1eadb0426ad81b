"""Command-line flags derived from a spec model, as TRL's ``HfArgumentParser`` derives them from a dataclass.

Every scalar field of a job spec (``str``, ``int``, ``float``, ``bool``, a ``Literal`` or an optional of
those) becomes a flag named after it (``max_steps`` -> ``--max-steps``) whose help is the field's own
``description``; the fields of a nested spec model become ``--<field>-<subfield>`` (``lora.rank`` ->
``--lora-rank``). A new spec field therefore needs no CLI edit. Lists, mappings and deeper models are set
with ``--set key.path=value`` or a ``--config`` file.

Usage::

    command = spec_command("sft", SFTSpec, run=lambda values, options: ...,
                           aliases={("learning_rate",): ["--lr"]}, routes={"data": ("data", "train")})
    train_app.command("sft")(command)

``values`` maps each given flag's key path (``("lora", "rank")``) to its value; flags the user did not give
are absent, so a config file's value is never overwritten by a default.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo

KeyPath = tuple[str, ...]
SCALARS = (str, int, float, bool)


@dataclass(frozen=True)
class SpecFlag:
    """One flag: the spec key path it sets, its option names, its Python type and its help text."""

    path: KeyPath
    names: tuple[str, ...]
    type: type
    help: str

    @property
    def param(self) -> str:
        """The Python parameter name of the flag (unique per command)."""
        return "f_" + "__".join(self.path)


def _scalar(annotation: Any) -> tuple[type, list[Any]] | None:
    """(Python type, choices) of a scalar annotation, None for anything else."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if origin is Literal:
        choices = list(typing.get_args(annotation))
        kinds = {type(c) for c in choices}
        return (kinds.pop() if len(kinds) == 1 else str), choices
    if annotation in SCALARS:
        return annotation, []
    return None


def _model(annotation: Any) -> type[BaseModel] | None:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _model(args[0]) if len(args) == 1 else None
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _help(field: FieldInfo, choices: Sequence[Any]) -> str:
    text = (field.description or "").strip()
    if choices and not all(str(c) in text for c in choices):
        text = f"{text} One of: {', '.join(map(str, choices))}.".strip()
    return text


def _option_names(path: KeyPath, kind: type) -> tuple[str, ...]:
    name = "--" + "-".join(p.replace("_", "-") for p in path)
    if kind is bool:
        return (f"{name}/--no-{name[2:]}",)
    return (name,)


def spec_flags(spec_cls: type[BaseModel], *, skip: Sequence[str] = (), routes: Mapping[str, KeyPath] | None = None,
               aliases: Mapping[KeyPath, Sequence[str]] | None = None) -> list[SpecFlag]:
    """The flags of ``spec_cls``: its scalar fields and one level of nested spec models.

    ``skip``: top-level fields with no flag (set them with ``--set``). ``routes``: a flag name that sets
    a nested path (``{"data": ("data", "train")}`` gives ``--data`` for ``data.train``). ``aliases``: extra
    option names for a key path (``{("learning_rate",): ["--lr"]}``).
    """
    routes, aliases = dict(routes or {}), dict(aliases or {})
    flags: list[SpecFlag] = []
    for name, field in spec_cls.model_fields.items():
        if name in skip:
            continue
        scalar = _scalar(field.annotation)
        if scalar is not None:
            flags.append(SpecFlag((name,), _option_names((name,), scalar[0]), scalar[0], _help(field, scalar[1])))
            continue
        nested = _model(field.annotation)
        if nested is None:
            continue
        for sub, subfield in nested.model_fields.items():
            sub_scalar = _scalar(subfield.annotation)
            if sub_scalar is None:
                continue
            path = (name, sub)
            flag_name = next((k for k, v in routes.items() if v == path), None)
            names = (f"--{flag_name.replace('_', '-')}",) if flag_name else _option_names(path, sub_scalar[0])
            flags.append(SpecFlag(path, names, sub_scalar[0], _help(subfield, sub_scalar[1])))
    out = []
    for flag in flags:
        extra = tuple(aliases.get(flag.path, ()))
        out.append(SpecFlag(flag.path, flag.names + extra, flag.type, flag.help) if extra else flag)
    return out


def nest(values: Mapping[KeyPath, Any]) -> dict[str, Any]:
    """``{("lora", "rank"): 32, ("seed",): 1}`` -> ``{"lora": {"rank": 32}, "seed": 1}``."""
    out: dict[str, Any] = {}
    for path, value in values.items():
        node = out
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return out


#: Options every spec command has besides its spec's fields (name -> (typer option, annotation)).
COMMON_OPTIONS: dict[str, tuple[Any, Any]] = {
    "config": (typer.Option(None, "--config", "-c", help="Spec file (YAML or JSON); flags override it."), Path | None),
    "sets": (typer.Option(None, "--set", help="Any spec field: --set lora.rank=32 (repeatable)."), list[str] | None),
    "detach": (typer.Option(False, "--detach", help="Return once the job is queued."), bool),
    "dry_run": (typer.Option(False, "--dry-run", help="Validate the data and show a rendered sample; do not train."),
                bool),
    "samples": (typer.Option(1, "--samples", help="Records to render with --dry-run."), int),
}


def spec_command(spec_cls: type[BaseModel], run: Callable[[dict[KeyPath, Any], dict[str, Any]], None], *,
                 doc: str, skip: Sequence[str] = (), routes: Mapping[str, KeyPath] | None = None,
                 aliases: Mapping[KeyPath, Sequence[str]] | None = None, short: Mapping[KeyPath, str] | None = None,
                 extra: Mapping[str, tuple[Any, Any]] | None = None) -> Callable[..., None]:
    """A typer command whose flags are ``spec_cls``'s fields plus :data:`COMMON_OPTIONS` and ``extra``.

    ``run(values, options)`` receives the given spec flags by key path and the other options by name.
    ``short`` adds one-letter names (``{("model",): "-m"}``).
    """
    merged_aliases: dict[KeyPath, list[str]] = {k: list(v) for k, v in (aliases or {}).items()}
    for path, letter in (short or {}).items():
        merged_aliases.setdefault(path, []).append(letter)
    flags = spec_flags(spec_cls, skip=skip, routes=routes, aliases=merged_aliases)
    options = {**COMMON_OPTIONS, **(extra or {})}
    params = [inspect.Parameter(f.param, inspect.Parameter.KEYWORD_ONLY, annotation=f.type | None,
                                default=typer.Option(None, *f.names, help=f.help)) for f in flags]
    params += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)
               for name, (option, annotation) in options.items()]
    by_param = {f.param: f.path for f in flags}

    def command(**kwargs: Any) -> None:
        values = {by_param[k]: v for k, v in kwargs.items() if k in by_param and v is not None}
        run(values, {k: v for k, v in kwargs.items() if k not in by_param})

    command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    command.__doc__ = doc
    return command
