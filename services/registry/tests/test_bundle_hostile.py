"""Hostile bundles against the real import (real SQLite / PostgreSQL, real files): every crafted run
id and member name is either refused with a 400 naming the problem or imported confined to its
own ``runs/<id>`` directory, and a checksum of every other file under the test's root and every
other run's database rows proves nothing else changed (issue #18: an empty run id with
``replace`` used to replace all of ``runs/``)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from halo_common.errors import HaloError
from halo_common.paths import IMPORTED_MARKER, is_imported
from halo_registry.core.bundles import MANIFEST
from halo_registry.core.db import deleted_runs, lineage, metadata, metric_names, runs
from halo_registry.core.store import RegistryStore
from halo_registry.testing import RunEmitter, loss_at
from halo_schemas.registry import EvalRecordRequest, EvalResultIn, RunBundleRequest, RunImportRequest, RunTagRequest
from sqlalchemy import select

SPEC_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")  # the documented id rule, as the oracle


# ---- the world that must not change -----------------------------------------------------------
def populate(store: RegistryStore) -> None:
    """Three local runs (lineage, tags, evals, power, run directories with files) and a source run."""
    parent = RunEmitter("run-local-a", spec={"tags": ["keep"], "lr": 1e-4})
    child = RunEmitter("run-local-b", spec={"lr": 2e-4, "parent_run_id": "run-local-a", "fork_step": 3})
    third = RunEmitter("run-local-c", method="dpo")
    src = RunEmitter("run-src01", spec={"name": "shipped", "tags": ["ship"], "parent_run_id": "run-local-a"})
    for em in (parent, child, third, src):
        run_dir = store.run_dir(em.run_id)
        (run_dir / "adapter").mkdir(parents=True)
        (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(em.run_id.encode() * 100)
        (run_dir / "metrics.jsonl").write_text(f'{{"step": 0, "loss": 1.0, "run": "{em.run_id}"}}\n')
        events = [em.started(total_steps=6)]
        events += [em.progressed(s, 6, loss=loss_at(s), power_watts=100.0 + s) for s in range(6)]
        events += [em.artifact(str(run_dir / "adapter"), step=5), em.finished(summary={"final_loss": loss_at(5)})]
        store.apply_events(events)
    store.record_eval(EvalRecordRequest(run_id="run-local-a", results=[
        EvalResultIn(task="gsm8k", metric="accuracy", value=0.4, num_samples=10)]))
    store.tag(RunTagRequest(run_id="run-local-c", add=["third"]))


def tree_digest(root: Path, skip: Callable[[Path], bool]) -> dict[str, tuple[Any, ...]]:
    """relative path -> (kind, content hash / link target, mode) of everything under ``root``."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if skip(p):
                continue
            st = p.lstat()
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
        dirnames[:] = [d for d in dirnames if not skip(Path(dirpath) / d)]
    return out


def db_digest(store: RegistryStore, exclude: str | None) -> dict[str, list[str]]:
    """Every table's rows except those of run ``exclude`` (metric_names is checked as a superset)."""
    out: dict[str, list[str]] = {}
    with store.db.read() as conn:
        pk = conn.scalar(select(runs.c.pk).where(runs.c.run_id == exclude)) if exclude is not None else None
        for table in metadata.sorted_tables:
            if table.name in ("run_facet_counts", "run_tag_facet_counts"):
                continue  # a derived count of every run (the imported one included), checked against a scan elsewhere
            rows = [dict(r._mapping) for r in conn.execute(select(table))]
            if "run_pk" in table.c:
                rows = [r for r in rows if r["run_pk"] != pk]
            if table is runs or table is deleted_runs:
                rows = [r for r in rows if r["run_id"] != exclude]
            if table is lineage:
                rows = [r for r in rows if r["child_run_id"] != exclude]
            if table is runs:  # pks are handed out anew; compare rows by run id
                rows = [{k: v for k, v in r.items() if k != "pk"} for r in rows]
            out[table.name] = sorted(json.dumps(r, sort_keys=True, default=str) for r in rows)
    return out


# ---- crafting bundles ------------------------------------------------------------------------
@dataclass
class Member:
    name: str
    data: bytes = b"x"
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    listed: bool = True  # listed in MANIFEST.json (with its real checksum)


@dataclass
class Craft:
    run_id: str
    manifest_run_id: str | None = None
    extra: list[Member] = field(default_factory=list)
    run_edit: Callable[[dict[str, Any]], None] | None = None


def genuine_members(store: RegistryStore) -> dict[str, bytes]:
    path = Path(store.bundle(RunBundleRequest(run_id="run-src01")).path)
    with tarfile.open(path) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
    path.unlink()
    return members


def craft(base: dict[str, bytes], c: Craft, out: Path) -> Path:
    """A bundle for ``c.run_id`` whose manifest matches its listed members (so only the hostile part
    can be what is refused)."""
    members = dict(base)
    detail = json.loads(members["run.json"])
    detail["run"]["run_id"] = c.run_id
    detail["cost"]["run_id"] = c.run_id
    for link in detail["parents"]:
        link["child_run_id"] = c.run_id
    if c.run_edit:
        c.run_edit(detail)
    members["run.json"] = json.dumps(detail).encode()
    members.pop(MANIFEST)
    files = [{"path": n, "sha256": hashlib.sha256(d).hexdigest(), "size_bytes": len(d)} for n, d in members.items()]
    files += [{"path": m.name, "sha256": hashlib.sha256(m.data).hexdigest(), "size_bytes": len(m.data)}
              for m in c.extra if m.listed and m.type == tarfile.REGTYPE]
    manifest = {"format": "halo-run-bundle", "version": 1, "run_id": c.manifest_run_id if c.manifest_run_id
                is not None else c.run_id, "created_by": "halo-registry evil on elsewhere", "files": files}
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [(MANIFEST, json.dumps(manifest).encode()), *members.items()]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for m in c.extra:
            info = tarfile.TarInfo(m.name)
            info.type, info.linkname = m.type, m.linkname
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tar.addfile(info, io.BytesIO(m.data))
            else:
                tar.addfile(info)
    return out


def _parents(*links: tuple[str, str]) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        d["parents"] = [{"parent_run_id": p, "child_run_id": c, "relation": "fork",
                         "created_at": "2026-01-01T00:00:00Z"} for p, c in links]
    return edit


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        *head, last = path.split(".")
        for k in head:
            d = d[k]
        d[last] = value
    return edit


def _children_of_locals(d: dict[str, Any]) -> None:
    d["children"] = [{"parent_run_id": d["run"]["run_id"], "child_run_id": c, "relation": "fork",
                      "created_at": "2026-01-01T00:00:00Z"} for c in ("run-local-a", "run-local-c")]


HOSTILE_RUN_IDS = ["", "\n", "a\n", "\nrun-x", "..", ".", "...", "a/b", "/abs", "/", "a\\b", "run-x/../run-local-a",
                   "../runs", "é", "run-é", "ｒｕｎ", "x" * 129, "a\x00b", " ", "run 1", "-lead", "_lead", "a.b",
                   "run-local-a/", "a\tb", "a\rb", "\u202erun"]
F = tarfile.REGTYPE
HOSTILE_MEMBERS: list[tuple[str, list[Member], str]] = [
    ("dotdot", [Member("../escape.txt")], "unsafe path"),
    ("deep dotdot", [Member("adapter/../../../escape.txt")], "unsafe path"),
    ("absolute", [Member("/tmp/abs.txt")], "unsafe path (it is absolute)"),
    ("backslash", [Member("adapter\\..\\x")], "unsafe path (it contains '\\\\')"),
    ("dot component", [Member("./run.json")], "unsafe path"),
    ("empty component", [Member("adapter//x")], "unsafe path"),
    ("newline", [Member("adapter/a\nb")], "unsafe path (it contains '\\n')"),
    ("long component", [Member("adapter/" + "y" * 300)], "path component of 300 bytes"),
    ("very long name", [Member("adapter/" + "/".join(["z" * 50] * 30))], "character name"),
    ("another run's files", [Member("run-local-a/metrics.jsonl")], "is not one of the run's files"),
    ("forged marker", [Member(IMPORTED_MARKER, b"{}")], "is not one of the run's files"),
    ("checkpoint", [Member("checkpoints/checkpoint-1/x")], "is not one of the run's files"),
    ("symlink out", [Member("adapter/weights", type=tarfile.SYMTYPE, linkname="/etc/passwd")], "is a symbolic link"),
    ("symlink sibling", [Member("adapter/w", type=tarfile.SYMTYPE, linkname="../../run-local-a")], "is a symbolic link"),
    ("hardlink", [Member("adapter/hl", type=tarfile.LNKTYPE, linkname="run.json")], "is a hard link"),
    ("hardlink out", [Member("adapter/hl", type=tarfile.LNKTYPE, linkname="../../runs/run-local-a/metrics.jsonl")],
     "is a hard link"),
    ("char device", [Member("adapter/dev", type=tarfile.CHRTYPE)], "is a device"),
    ("fifo", [Member("adapter/fifo", type=tarfile.FIFOTYPE)], "is a device, FIFO"),
    ("duplicate", [Member("spec.json", b'{"evil": true}', listed=False)], "'spec.json' appears twice"),
    ("duplicate manifest", [Member(MANIFEST, b"{}", listed=False)], "'MANIFEST.json' appears twice"),
    ("file/dir clash", [Member("adapter/x"), Member("adapter/x/y")], "clashes with 'adapter/x'"),
    ("unlisted", [Member("adapter/extra.bin", listed=False)], "is not listed in MANIFEST.json"),
    ("dir outside", [Member("otherdir/", type=tarfile.DIRTYPE)], "is not one of the run's files"),
]


def _cases() -> list[tuple[str, Craft, bool, str | None, str | None]]:
    """(label, craft, replace, expected param of a 400 or None for a confined import, needle)."""
    cases: list[tuple[str, Craft, bool, str | None, str | None]] = []
    for rid in HOSTILE_RUN_IDS:
        for replace in (False, True):
            cases.append((f"run id {rid!r}", Craft(rid), replace, "run_id", "invalid run_id"))
    cases.append(("manifest id empty", Craft("run-ok-1", manifest_run_id=""), True, "run_id", "invalid run_id"))
    cases.append(("manifest id other run", Craft("run-ok-1", manifest_run_id="run-local-a"), True, "path",
                  "run.json is for 'run-ok-1' but MANIFEST.json says 'run-local-a'"))
    for label, extra, needle in HOSTILE_MEMBERS:
        cases.append((label, Craft("run-hostile", extra=list(extra)), True, "path", needle))
    cases += [
        ("parent link of another run", Craft("run-lin", run_edit=_parents(("run-local-c", "run-local-a"))), True, "path",
         "may only describe its own run"),
        ("parent id hostile", Craft("run-lin", run_edit=_parents(("../x", "run-lin"))), True, "run_id",
         "invalid run_id"),
        ("name too long", Craft("run-long", run_edit=_set("run.name", "n" * 300)), True, "path",
         "name is 300 characters long"),
        ("tag with NUL", Craft("run-nul", run_edit=_set("run.tags", ["a\x00b"])), True, "path", "NUL"),
        ("NaN metric", Craft("run-nan"), True, None, None),  # replaced below with a crafted metrics.jsonl
        # Confined imports: odd but harmless names, and lineage claims about local runs (dropped).
        ("unicode members", Craft("run-ok-uni", extra=[Member("adapter/é.bin", b"e"), Member("adapter/ü/中.bin", b"z")]),
         False, None, None),
        ("children claims", Craft("run-ok-kids", run_edit=_children_of_locals), False, None, None),
        ("own parent link", Craft("run-ok-par", run_edit=_parents(("run-local-a", "run-ok-par"))), False, None, None),
        ("longest id", Craft("r" * 128), False, None, None),
        ("existing run without replace", Craft("run-local-c"), False, "replace", "already exists"),
        ("existing run with replace", Craft("run-local-c"), True, None, None),
    ]
    rng = random.Random(18)
    alphabet = "aZ09-_./\\\n \x00é:~*"
    for _ in range(40):
        rid = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6)))
        ok = SPEC_ID.fullmatch(rid) is not None and rid not in ("run-local-a", "run-local-b", "run-local-c", "run-src01")
        cases.append((f"random id {rid!r}", Craft(rid), True, None if ok else "run_id", None if ok else "invalid run_id"))
    return cases


def test_hostile_bundles_change_nothing_else(store: RegistryStore, tmp_path: Path) -> None:
    populate(store)
    home = store.paths.home
    store.paths.incoming_dir.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("do not touch")
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    base = genuine_members(store)

    for i, (label, c, replace, param, needle) in enumerate(_cases()):
        if label == "NaN metric":
            base_nan = dict(base, **{"metrics.jsonl": b'{"step": 0, "loss": NaN}\n'})
            bundle = craft(base_nan, c, crafted / f"{i}.tar.gz")
            param, needle = "path", "metrics.jsonl:1: malformed line"
        else:
            bundle = craft(base, c, crafted / f"{i}.tar.gz")
        # A refused import must change nothing at all; an accepted one only runs/<its id> and its rows.
        target = c.run_id if param is None else None

        def skip(p: Path, target: str | None = target) -> bool:
            return (p.name.startswith("forge.db") or p.is_relative_to(crafted)
                    or (target is not None and p.is_relative_to(home / "runs" / target)))

        files_before, rows_before = tree_digest(tmp_path, skip), db_digest(store, target)
        names_before = set(rows_before.pop(metric_names.name))
        ctx = f"case {label!r} (replace={replace})"
        try:
            imported = store.import_bundle(RunImportRequest(path=str(bundle), replace=replace))
            error = None
        except HaloError as exc:
            error = exc
        if param is None:
            assert error is None, f"{ctx}: refused: {error}"
            run_dir = home / "runs" / c.run_id
            assert imported.run_id == c.run_id and imported.run.origin == "imported", ctx
            marker = json.loads((run_dir / IMPORTED_MARKER).read_text())
            assert marker["source"] == "halo-registry evil on elsewhere", ctx
            assert marker["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest(), ctx
            assert is_imported(run_dir / "adapter", store.paths), ctx
            on_disk = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*") if p.is_file()}
            expected = {n for n in base if n != MANIFEST} | {m.name for m in c.extra} | {IMPORTED_MARKER}
            assert on_disk == expected, ctx
        else:
            assert error is not None, f"{ctx}: was imported"
            expected_code = 409 if param == "replace" else 400
            assert (error.code, error.param) == (expected_code, param), f"{ctx}: {error!r} {error.param}"
            assert needle in error.message, f"{ctx}: {error.message!r} lacks {needle!r}"
        files_after, rows_after = tree_digest(tmp_path, skip), db_digest(store, target)
        names_after = set(rows_after.pop(metric_names.name))
        assert files_after == files_before, f"{ctx}: files outside runs/{target} changed"
        assert rows_after == rows_before, f"{ctx}: other runs' rows changed"
        assert names_before <= names_after, ctx
        assert list(store.paths.incoming_dir.iterdir()) == [], f"{ctx}: staging left behind"

    # The local runs are all still there and intact, and not marked imported.
    for rid in ("run-local-a", "run-local-b", "run-src01"):
        assert store.summary(rid).origin == "local"
        assert not is_imported(store.run_dir(rid) / "adapter", store.paths)
    assert [lk.parent_run_id for lk in store.get("run-local-b").parents] == ["run-local-a"]
    assert [lk.parent_run_id for lk in store.get("run-ok-kids").parents] == ["run-local-a"]
    assert store.get("run-ok-kids").children == []  # its claims about local runs were not imported
    assert (outside / "precious.txt").read_text() == "do not touch"


def test_replace_swaps_exactly_one_run_and_restores_it_on_failure(store: RegistryStore, tmp_path: Path) -> None:
    """``replace`` swaps runs/<id> and its rows only; when the rows cannot be written the previous
    directory and rows come back unchanged."""
    populate(store)
    base = genuine_members(store)
    crafted = tmp_path / "crafted"
    crafted.mkdir()
    before_dir = tree_digest(store.run_dir("run-local-c"), lambda p: False)
    before_rows = db_digest(store, None)
    # Passes every file check, fails while writing rows (a tag PostgreSQL and the column refuse).
    bad = craft(base, Craft("run-local-c", run_edit=_set("run.tags", ["t" * 65])), crafted / "bad.tar.gz")
    with pytest.raises(HaloError, match=r"run.json run.tags\[\] tag is 65 characters long"):
        store.import_bundle(RunImportRequest(path=str(bad), replace=True))
    assert tree_digest(store.run_dir("run-local-c"), lambda p: False) == before_dir
    assert db_digest(store, None) == before_rows

    others_before = db_digest(store, "run-local-c")
    good = craft(base, Craft("run-local-c"), crafted / "good.tar.gz")
    store.import_bundle(RunImportRequest(path=str(good), replace=True))
    new_dir = store.run_dir("run-local-c")
    assert (new_dir / IMPORTED_MARKER).is_file()
    assert (new_dir / "adapter" / "adapter_model.safetensors").read_bytes() == b"run-src01" * 100
    assert not (new_dir / "metrics.jsonl").read_text().count("run-local-c")
    assert db_digest(store, "run-local-c") == others_before
    assert store.summary("run-local-c").origin == "imported"
    assert list(store.paths.incoming_dir.iterdir()) == []


def test_wire_models_use_the_shared_id_rule() -> None:
    """halo-schemas has no dependencies, so RunId repeats halo_common.ids.ID_PATTERN: keep them equal."""
    from halo_common.ids import ID_PATTERN
    from halo_schemas.registry import RunRef

    assert RunRef.model_json_schema()["properties"]["run_id"]["pattern"] == ID_PATTERN
