"""Run bundles: one ``.tar.gz`` that carries a run to another machine.

Members (all listed with sha256 and size in ``MANIFEST.json``, the first member)::

    run.json               RunDetail: the runs row, tags, lineage, artifacts, evals, notes
    spec.json              the job spec
    training_summary.json  the trainer's summary
    replay.json            the replay manifest (when the run has one)
    metrics.jsonl          one line per step, as trainers write it: {"step": 12, "loss": 1.9, ...}
    power.jsonl            power samples {"step", "ts", "watts"} (keeps a measured cost measured)
    evals.json             evaluation results
    adapter/...            the adapter files (when asked and present)
    artifacts/<id>/...     convert / merge outputs of the run (when asked and present): an export
                           file, or the files of an exported / merged model directory

Import verifies everything before it touches the database or ``runs/``: a member not in the
manifest, a listed member missing, a size or checksum that differs, an unsafe name (empty,
absolute, ``.``/``..``, backslash, control character), a member that is not one of the run's
files above, a link/hard link/device, a duplicate, a run id that is not a valid id
(``halo_common.ids``) — each is a :class:`BadRequest` naming the problem, and nothing is written.
Then only ``runs/<run_id>`` and that run's rows change (``replace`` swaps exactly those), and the
directory gets ``imported.json`` (source, bundle sha256, imported_at): see
``halo_common.paths.is_imported``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import shutil
import socket
import tarfile
import uuid
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from halo_common.errors import BadRequest, Conflict, NotFound
from halo_common.files import sha256_bytes, sha256_file, tree_sha256
from halo_common.ids import InvalidId, validate_id
from halo_common.paths import IMPORTED_MARKER, HaloPaths
from halo_schemas.base import describe_validation_error
from halo_schemas.registry import ArtifactInfo, BundleFile, BundleManifest, RunBundle, RunDetail
from pydantic import ValidationError
from sqlalchemy import Table, delete, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from halo_registry.core.db import (
    Database,
    artifacts,
    deleted_runs,
    eval_results,
    lineage,
    metric_names,
    metrics,
    power_samples,
    run_tags,
    runs,
)
from halo_registry.core.ingest import MAX_METRIC_NAME, utc, write_points
from halo_registry.core.mutations import remove_run_rows

MANIFEST = "MANIFEST.json"
SUFFIX = ".halo-bundle.tar.gz"
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 16 << 20
#: status_seq given to imported runs: no stray local event can move their status.
_IMPORTED_SEQ = 2**31 - 1


# ---- making a bundle -------------------------------------------------------------------------
def _metrics_jsonl(conn: Connection, pk: int) -> bytes:
    q = (select(metrics.c.step, metric_names.c.name, metrics.c.value)
         .join(metric_names, metric_names.c.id == metrics.c.name_id)
         .where(metrics.c.run_pk == pk).order_by(metrics.c.step, metric_names.c.name))
    out = io.StringIO()
    step: int | None = None
    row: dict[str, float] = {}
    for s, name, value in conn.execute(q):
        if s != step and step is not None:
            out.write(json.dumps({"step": step, **row}, sort_keys=True) + "\n")
            row = {}
        step = s
        row[name] = value
    if step is not None:
        out.write(json.dumps({"step": step, **row}, sort_keys=True) + "\n")
    return out.getvalue().encode()


def _power_jsonl(conn: Connection, pk: int) -> bytes:
    q = select(power_samples).where(power_samples.c.run_pk == pk).order_by(power_samples.c.step)
    return "".join(json.dumps({"step": r.step, "ts": r.ts.isoformat(), "watts": r.watts}) + "\n"
                   for r in conn.execute(q)).encode()


def adapter_source(detail: RunDetail, run_dir: Path) -> Path | None:
    """The adapter to bundle: the newest adapter artifact that exists, else ``run_dir/adapter``."""
    for art in reversed(detail.artifacts):
        if art.kind == "adapter" and Path(art.path).exists():
            return Path(art.path)
    fallback = run_dir / "adapter"
    return fallback if fallback.exists() else None


def _tree_files(src: Path, prefix: str) -> list[tuple[str, Path]]:
    """``(member name, file)`` for a file or every regular file under a directory (links skipped)."""
    if src.is_file():
        return [(f"{prefix}/{src.name}", src)]
    out = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append((f"{prefix}/{p.relative_to(src).as_posix()}", p))
    return out


def bundled_artifacts(detail: RunDetail) -> list[ArtifactInfo]:
    """The run's convert / merge outputs a bundle can carry: those with an id whose path exists."""
    return [a for a in detail.artifacts
            if a.kind in BUNDLED_ARTIFACT_KINDS and a.id is not None and Path(a.path).exists()]


def make_bundle(conn: Connection, pk: int, detail: RunDetail, run_dir: Path, out_dir: Path, *,
                include_adapter: bool, created_by: str, include_artifacts: bool = False) -> RunBundle:
    """Write the bundle of a run to ``out_dir/<run_id>.halo-bundle.tar.gz`` (atomically)."""
    run_id = detail.run.run_id
    blobs: dict[str, bytes] = {
        "run.json": detail.model_dump_json(indent=2).encode(),
        "spec.json": json.dumps(detail.spec, indent=2, sort_keys=True).encode(),
        "training_summary.json": json.dumps(detail.summary, indent=2, sort_keys=True).encode(),
        "metrics.jsonl": _metrics_jsonl(conn, pk),
        "power.jsonl": _power_jsonl(conn, pk),
        "evals.json": json.dumps([e.model_dump(mode="json") for e in detail.evals], indent=2).encode(),
    }
    replay = run_dir / "replay.json"
    if replay.is_file():
        blobs["replay.json"] = replay.read_bytes()
    disk: list[tuple[str, Path]] = []
    if include_adapter:
        src = adapter_source(detail, run_dir)
        if src is not None:
            disk = _tree_files(src, ADAPTER_DIR)
    if include_artifacts:
        for art in bundled_artifacts(detail):
            disk += _tree_files(Path(art.path), f"{ARTIFACTS_DIR}/{art.id}")
    files = [BundleFile(path=n, sha256=sha256_bytes(b), size_bytes=len(b)) for n, b in blobs.items()]
    files += [BundleFile(path=n, sha256=sha256_file(p), size_bytes=p.stat().st_size) for n, p in disk]
    manifest = BundleManifest(run_id=run_id, created_by=created_by, files=sorted(files, key=lambda f: f.path))

    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"{run_id}{SUFFIX}"
    tmp = out_dir / f".{run_id}.{uuid.uuid4().hex}.tmp"
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            _add_bytes(tar, MANIFEST, manifest.model_dump_json(indent=2).encode())
            for name, data in blobs.items():
                _add_bytes(tar, name, data)
            for name, path in disk:
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with open(path, "rb") as f:
                    tar.addfile(info, f)
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)
    return RunBundle(run_id=run_id, path=str(final), sha256=sha256_file(final), size_bytes=final.stat().st_size,
                     files=len(files))


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


# ---- verifying and importing -----------------------------------------------------------------
#: What a bundle may hold besides MANIFEST.json: these files at its root and ``adapter/…``. Any
#: other member (another run's files, checkpoints, an ``imported.json`` of its own) is refused.
RUN_FILES = frozenset({"run.json", "spec.json", "training_summary.json", "replay.json", "metrics.jsonl",
                       "power.jsonl", "evals.json"})
ADAPTER_DIR = "adapter"
ARTIFACTS_DIR = "artifacts"
#: Artifact kinds a bundle carries on request: what convert (export) and merge (model, adapter) write.
BUNDLED_ARTIFACT_KINDS = frozenset({"export", "model"})
_MAX_NAME_CHARS = 1024
_MAX_PART_BYTES = 255  # NAME_MAX of every common filesystem


def _show(name: str) -> str:
    return repr(name) if len(name) <= 120 else repr(name[:120]) + "…"


def _refused(name: str, why: str) -> BadRequest:
    return BadRequest(f"bundle member {_show(name)} {why}; refusing to import", param="path")


def _is_artifact_dir(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and parts[0] == ARTIFACTS_DIR and parts[1].isascii() and parts[1].isdigit()


def check_member_name(name: str) -> str:
    """Return ``name`` when it is a safe member path of a bundle: relative POSIX, no empty, ``.``
    or ``..`` component, no backslash or control character, valid UTF-8, and one of the run's own
    files (:data:`RUN_FILES`, ``adapter/…`` or MANIFEST.json). Otherwise a :class:`BadRequest`
    naming the member and the problem."""
    if not name:
        raise _refused(name, "has an empty name")
    if len(name) > _MAX_NAME_CHARS:
        raise _refused(name, f"has a {len(name)}-character name (at most {_MAX_NAME_CHARS})")
    bad = next((c for c in name if ord(c) < 32 or ord(c) == 127 or c == "\\"), None)
    if bad is not None:
        raise _refused(name, f"has an unsafe path (it contains {bad!r})")
    if name.startswith("/"):
        raise _refused(name, "has an unsafe path (it is absolute)")
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise _refused(name, "has an unsafe path (an empty, '.' or '..' component)")
    try:
        longest = max(len(part.encode("utf-8")) for part in parts)
    except UnicodeEncodeError:
        raise _refused(name, "has a name that is not valid UTF-8") from None
    if longest > _MAX_PART_BYTES:
        raise _refused(name, f"has a path component of {longest} bytes (at most {_MAX_PART_BYTES})")
    artifact = parts[0] == ARTIFACTS_DIR and len(parts) > 2 and parts[1].isascii() and parts[1].isdigit()
    if name != MANIFEST and name not in RUN_FILES and not (parts[0] == ADAPTER_DIR and len(parts) > 1) \
            and not artifact:
        raise _refused(name, f"is not one of the run's files ({', '.join(sorted(RUN_FILES))}, "
                             f"{ADAPTER_DIR}/… or {ARTIFACTS_DIR}/<id>/…)")
    return name


def _check_type(member: tarfile.TarInfo, name: str) -> None:
    if member.issym():
        raise _refused(name, f"is a symbolic link (to {_show(member.linkname)}), not a regular file")
    if member.islnk():
        raise _refused(name, f"is a hard link (to {_show(member.linkname)}), not a regular file")
    if not member.isfile():
        raise _refused(name, "is a device, FIFO or other special file, not a regular file")


def _check_run_id(value: str, where: str) -> str:
    try:
        return validate_id(value, "run_id")
    except InvalidId as exc:
        raise BadRequest(f"{where}: {exc.message}; refusing to import", param="run_id") from None


def verify_extract(bundle: Path, staging: Path) -> BundleManifest:
    """Extract ``bundle`` into the empty directory ``staging`` while hashing every member, then
    check the members against MANIFEST.json exactly. Raises :class:`BadRequest` naming the first
    problem; only regular files with safe names (:func:`check_member_name`) are ever written, each
    created anew (never through an existing path)."""
    if not bundle.is_file():
        raise NotFound(f"bundle {str(bundle)!r} does not exist", param="path")
    seen: dict[str, tuple[str, int]] = {}
    parents: set[str] = set()  # directories implied by the files written so far
    manifest_raw: bytes | None = None
    try:
        with tarfile.open(bundle, "r:*") as tar:
            for member in tar:
                if member.isdir():
                    name = member.name.rstrip("/")
                    if name not in (ADAPTER_DIR, ARTIFACTS_DIR) and not _is_artifact_dir(name):
                        check_member_name(name)
                    continue
                name = check_member_name(member.name)
                _check_type(member, name)
                if name in seen or (name == MANIFEST and manifest_raw is not None):
                    raise _refused(name, "appears twice")
                prefixes = ["/".join(name.split("/")[:k]) for k in range(1, name.count("/") + 1)]
                clash = name if name in parents else next((p for p in prefixes if p in seen), None)
                if clash is not None:
                    raise _refused(name, f"clashes with {_show(clash)} (a file and a directory of the same name)")
                src = tar.extractfile(member)
                assert src is not None
                if name == MANIFEST:
                    if member.size > _MAX_MANIFEST_BYTES:
                        raise BadRequest(f"{MANIFEST} is implausibly large ({member.size} bytes)", param="path")
                    manifest_raw = src.read()
                    continue
                target = staging / name
                target.parent.mkdir(parents=True, exist_ok=True)
                h, size = hashlib.sha256(), 0
                with open(target, "xb") as out:  # "x": never write through something already there
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                seen[name] = (h.hexdigest(), size)
                parents.update(prefixes)
    except tarfile.ReadError:
        raise BadRequest("not a readable Halo run bundle (not a gzip/bz2/xz/plain tar archive)", param="path") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError, UnicodeDecodeError) as exc:
        raise BadRequest(f"not a readable Halo run bundle (truncated or corrupt: {type(exc).__name__}: {exc})",
                         param="path") from None
    if manifest_raw is None:
        raise BadRequest(f"not a Halo run bundle: it has no {MANIFEST}", param="path")
    try:
        manifest = BundleManifest.model_validate_json(manifest_raw)
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, what=f"{bundle.name}:{MANIFEST}"), param="path") from None
    if manifest.version != 1:
        raise BadRequest(f"bundle format version {manifest.version} is not supported (this registry reads 1)",
                         param="path")
    _check_run_id(manifest.run_id, f"{MANIFEST} run_id")
    listed: dict[str, BundleFile] = {}
    for f in manifest.files:
        if f.path == MANIFEST or f.path in listed:
            raise BadRequest(f"{MANIFEST} lists {_show(f.path)} {'twice' if f.path in listed else 'as a file'}; "
                             "refusing to import", param="path")
        listed[check_member_name(f.path)] = f
    extra, absent = sorted(seen.keys() - listed.keys()), sorted(listed.keys() - seen.keys())
    if extra:
        raise BadRequest(f"bundle member {extra[0]!r} is not listed in {MANIFEST}: the bundle was modified; "
                         "refusing to import", param="path")
    if absent:
        raise BadRequest(f"{MANIFEST} lists {absent[0]!r} but the bundle does not contain it; refusing to import",
                         param="path")
    for name, entry in sorted(listed.items()):
        digest, size = seen[name]
        if size != entry.size_bytes or digest != entry.sha256:
            raise BadRequest(
                f"checksum mismatch for {name!r} (expected sha256 {entry.sha256[:12]}… size {entry.size_bytes}, "
                f"got {digest[:12]}… size {size}): the bundle was modified or corrupted; refusing to import",
                param="path",
            )
    if "run.json" not in seen:
        raise BadRequest(f"{bundle.name} has no run.json; refusing to import", param="path")
    return manifest


@contextlib.contextmanager
def staging_dir(incoming: Path) -> Iterator[Path]:
    """A private directory under HALO_HOME/incoming (same filesystem as runs/, so moves are renames),
    removed with everything in it afterwards."""
    path = incoming / f".staging-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _points(tree: Path) -> Iterator[tuple[int, str, float]]:
    path = tree / "metrics.jsonl"
    if not path.exists():
        return
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                step = int(rec.pop("step"))
                for name, value in rec.items():
                    v = float(value)
                    if not math.isfinite(v) or not 0 < len(name) <= MAX_METRIC_NAME:
                        raise ValueError(f"{_show(name)}: not a finite value with a 1-{MAX_METRIC_NAME} character name")
                    yield step, str(name), v
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BadRequest(f"metrics.jsonl:{lineno}: malformed line ({type(exc).__name__}: {exc})",
                                 param="path") from None


def _read_detail(bundle: Path, tree: Path, manifest: BundleManifest) -> RunDetail:
    """run.json as a RunDetail whose run id (and its parents' ids) are valid ids, the manifest's."""
    try:
        detail = RunDetail.model_validate_json((tree / "run.json").read_bytes())
    except ValidationError as exc:
        raise BadRequest(describe_validation_error(exc, what=f"{bundle.name}:run.json"), param="path") from None
    run_id = _check_run_id(detail.run.run_id, "run.json run_id")
    if run_id != manifest.run_id:
        raise BadRequest(f"run.json is for {run_id!r} but {MANIFEST} says {manifest.run_id!r}", param="path")
    for link in detail.parents:
        _check_run_id(link.parent_run_id, "run.json parents[].parent_run_id")
        if link.child_run_id != run_id:
            raise BadRequest(f"run.json lists a parent link of {_show(link.child_run_id)}, not of {run_id!r}: a bundle "
                             "may only describe its own run; refusing to import", param="path")
    return detail


def import_marker(bundle: Path, manifest: BundleManifest, detail: RunDetail) -> dict[str, Any]:
    """The contents of ``runs/<run_id>/imported.json`` (halo_common.paths.IMPORTED_MARKER)."""
    return {
        "run_id": detail.run.run_id,
        "source": manifest.created_by,
        "source_run_dir": detail.run_dir,
        "bundle_created_at": manifest.created_at.isoformat(),
        "bundle_sha256": sha256_file(bundle),
        "files": len(manifest.files),
        "imported_at": datetime.now(UTC).isoformat(),
    }


def import_bundle(db: Database, bundle: Path, paths: HaloPaths, *, replace: bool) -> tuple[str, int]:
    """Verify ``bundle`` and make its run searchable here. Returns (run_id, files restored).

    Touches nothing but that one run: the archive is extracted into a private directory under
    HALO_HOME/incoming and checked in full (names, types, checksums, run id, content) first; then,
    in one database transaction, the run's rows are written (replacing only that run's rows) and
    its directory is renamed into ``runs/<run_id>`` (an existing one is renamed aside, and restored
    if anything fails, else removed). Refuses an existing run unless ``replace``. The run directory
    gets an :data:`~halo_common.paths.IMPORTED_MARKER` file: its contents are data from elsewhere."""
    with staging_dir(paths.incoming_dir) as staging:
        tree = staging / "run"
        tree.mkdir()
        manifest = verify_extract(bundle, tree)
        detail = _read_detail(bundle, tree, manifest)
        run_id = detail.run.run_id
        run_dir = paths.run_dir(run_id)
        if run_dir.parent != paths.runs_dir:  # defence in depth: a valid id is one path component
            raise BadRequest(f"run id {run_id!r} does not name a directory of its own", param="run_id")
        with db.read() as conn:
            exists = conn.scalar(select(runs.c.pk).where(runs.c.run_id == run_id)) is not None
        on_disk = run_dir.exists() or run_dir.is_symlink()
        if (exists or on_disk) and not replace:
            where = "in the registry" if exists else f"on disk ({run_dir})"
            raise Conflict(f"run {run_id!r} already exists {where}; import with replace to overwrite it",
                           param="replace")
        (tree / IMPORTED_MARKER).write_text(json.dumps(import_marker(bundle, manifest, detail), indent=2) + "\n")
        paths.runs_dir.mkdir(parents=True, exist_ok=True)
        previous, moved_old, moved_new = staging / "previous", False, False
        try:
            with db.write() as conn:
                _insert(db, conn, detail, tree, run_dir, manifest)
                if on_disk:
                    os.replace(run_dir, previous)  # a symlinked run dir moves as the link, never followed
                    moved_old = True
                os.replace(tree, run_dir)
                moved_new = True
        except BaseException as exc:
            # Put the previous run back as it was; the new tree goes away with the staging dir.
            if moved_new:
                os.replace(run_dir, staging / "failed")
            if moved_old:
                os.replace(previous, run_dir)
            if isinstance(exc, sa_exc.DataError):  # e.g. a "\u0000" PostgreSQL's JSONB refuses
                raise BadRequest(f"run.json holds a value the database cannot store ({exc.orig}); refusing to "
                                 "import", param="path") from None
            raise
        return run_id, len(manifest.files)


def _fits(table: Table, row: dict[str, Any], what: str) -> dict[str, Any]:
    """``row`` when every string fits its column (PostgreSQL refuses longer ones and NUL characters,
    SQLite would silently keep them), else a BadRequest naming the field."""
    for key, value in row.items():
        if not isinstance(value, str):
            continue
        limit = getattr(table.c[key].type, "length", None)
        if limit is not None and len(value) > limit:
            raise BadRequest(f"{what} {key} is {len(value)} characters long (at most {limit}); refusing to import",
                             param="path")
        if "\x00" in value:
            raise BadRequest(f"{what} {key} contains a NUL character; refusing to import", param="path")
    return row


def _insert(db: Database, conn: Connection, detail: RunDetail, tree: Path, run_dir: Path,
            manifest: BundleManifest) -> None:
    """Write the run's rows (replacing only this run's) from the verified files in ``tree``;
    ``run_dir`` is where they will live."""
    r = detail.run
    last_ts = max(t for t in (r.created_at, r.started_at, r.finished_at) if t is not None)
    row = _fits(runs, dict(
        run_id=r.run_id, name=r.name, job_id=r.job_id, service=r.service, method=r.method,
        base_model=r.base_model, models=r.models or None, backend=r.backend, status=r.status.value,
        status_ts=utc(last_ts), status_seq=_IMPORTED_SEQ, created_at=utc(r.created_at),
        started_at=r.started_at and utc(r.started_at), finished_at=r.finished_at and utc(r.finished_at),
        last_event_at=utc(last_ts), duration_s=r.duration_s, last_step=r.last_step, total_steps=r.total_steps,
        spec=detail.spec or None, summary=detail.summary or None, error=r.error, notes=detail.notes,
        origin="imported",
    ), "run.json run")
    tags = [_fits(run_tags, {"tag": t}, "run.json run.tags[]") for t in sorted(set(r.tags))]
    old = conn.scalar(select(runs.c.pk).where(runs.c.run_id == r.run_id))
    if old is not None:
        remove_run_rows(conn, old, r.run_id)
    conn.execute(delete(deleted_runs).where(deleted_runs.c.run_id == r.run_id))
    pk = conn.execute(runs.insert().values(**row)).inserted_primary_key[0]
    if tags:
        conn.execute(run_tags.insert(), [{"run_pk": pk, **t} for t in tags])
    write_points(db, conn, ((pk, n, s, v) for s, n, v in _points(tree)))
    power = []
    for lineno, line in enumerate((tree / "power.jsonl").read_text().splitlines()
                                  if (tree / "power.jsonl").exists() else [], 1):
        try:
            rec = json.loads(line)
            power.append({"run_pk": pk, "step": int(rec["step"]), "ts": utc(datetime.fromisoformat(rec["ts"])),
                          "watts": float(rec["watts"])})
            if not (math.isfinite(power[-1]["watts"]) and power[-1]["watts"] >= 0):
                raise ValueError("watts must be a finite number >= 0")
        except (ValueError, KeyError, TypeError) as exc:
            raise BadRequest(f"power.jsonl:{lineno}: malformed line ({exc})", param="path") from None
    if power:
        conn.execute(power_samples.insert(), power)
    if detail.evals:
        conn.execute(eval_results.insert(), [
            _fits(eval_results, {"run_pk": pk, "task": e.task, "metric": e.metric, "value": e.value,
                                 "higher_is_better": e.higher_is_better, "num_samples": e.num_samples,
                                 "stderr": e.stderr, "details": e.details or None, "source": e.source,
                                 "created_at": utc(e.created_at)}, "evals")
            for e in detail.evals
        ])
    adapter_files = {f.path[len("adapter/"):]: f for f in manifest.files if f.path.startswith("adapter/")}
    if adapter_files:
        original = next((a for a in reversed(detail.artifacts) if a.kind == "adapter"), None)
        conn.execute(artifacts.insert().values(
            run_pk=pk, kind="adapter", format=original.format[:32] if original else "other",
            path=str(run_dir / "adapter"), sha256=tree_sha256({p: f.sha256 for p, f in adapter_files.items()}),
            size_bytes=sum(f.size_bytes for f in adapter_files.values()),
            step=original.step if original else None, created_at=utc(manifest.created_at),
        ))
    _insert_artifacts(conn, pk, detail, run_dir, manifest)
    # Only the run's own parent links: a bundle must not add lineage to runs that live here (its
    # "children" are runs of the source machine; a child imported here brings its own link).
    links = {lk.parent_run_id: lk for lk in detail.parents if lk.parent_run_id != r.run_id}
    if links:
        stmt = db.insert(lineage).on_conflict_do_nothing()
        conn.execute(stmt, [_fits(lineage, {"parent_run_id": lk.parent_run_id, "child_run_id": r.run_id,
                                            "relation": lk.relation, "step": lk.step, "cycle": lk.cycle,
                                            "created_at": utc(lk.created_at)}, "run.json parents[]")
                            for lk in links.values()])


def _insert_artifacts(conn: Connection, pk: int, detail: RunDetail, run_dir: Path, manifest: BundleManifest) -> None:
    """Artifact rows for the convert / merge outputs the bundle carries, pointing at their new home
    ``run_dir/artifacts/<source artifact id>/``, with the source row's kind, format, quant, verify
    status and figures; size and sha256 are those of the files that arrived."""
    by_id: dict[str, dict[str, BundleFile]] = {}
    for f in manifest.files:
        parts = f.path.split("/", 2)
        if parts[0] == ARTIFACTS_DIR:
            by_id.setdefault(parts[1], {})[parts[2]] = f
    source = {str(a.id): a for a in detail.artifacts if a.id is not None}
    for art_id, files in sorted(by_id.items()):
        art = source.get(art_id)
        if art is None or art.kind not in BUNDLED_ARTIFACT_KINDS:
            raise BadRequest(f"bundle member {ARTIFACTS_DIR}/{art_id}/ is not an export or merged model listed in "
                             "run.json artifacts; refusing to import", param="path")
        home = run_dir / ARTIFACTS_DIR / art_id
        single = Path(art.path).name if len(files) == 1 and Path(art.path).name in files else None
        path = home / single if single else home
        sha = files[single].sha256 if single else tree_sha256({p: f.sha256 for p, f in files.items()})
        conn.execute(artifacts.insert().values(**_fits(artifacts, dict(
            run_pk=pk, kind=art.kind, format=art.format, path=str(path), sha256=sha,
            size_bytes=sum(f.size_bytes for f in files.values()), step=art.step, created_at=utc(art.created_at),
            quant=art.quant, status=art.status, details={**art.details, "imported_from": art.path} or None,
        ), f"run.json artifacts[{art_id}]")))


def created_by(version: str) -> str:
    return f"halo-registry {version} on {socket.gethostname()}"
