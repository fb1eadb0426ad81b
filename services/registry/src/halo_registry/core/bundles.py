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

Import verifies before it touches the database: a member not in the manifest, a listed member
missing, a size or checksum that differs, an unsafe path (absolute, ``..``, a link) — each is a
:class:`BadRequest` naming the member, and nothing is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import tarfile
import uuid
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from halo_common.errors import BadRequest, Conflict, NotFound
from halo_schemas.base import describe_validation_error
from halo_schemas.registry import BundleFile, BundleManifest, RunBundle, RunDetail
from pydantic import ValidationError
from sqlalchemy import delete, select
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
from halo_registry.core.ingest import utc, write_points
from halo_registry.core.mutations import remove_run_rows

MANIFEST = "MANIFEST.json"
SUFFIX = ".halo-bundle.tar.gz"
_CHUNK = 1 << 20
_MAX_MANIFEST_BYTES = 16 << 20
#: status_seq given to imported runs: no stray local event can move their status.
_IMPORTED_SEQ = 2**31 - 1


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def tree_sha256(files: dict[str, str]) -> str:
    """Hash of a directory from its files' hashes (``<relative path> <sha256>\\n`` lines, sorted):
    the same convention as ReplayManifest datasets."""
    return sha256_bytes("".join(f"{p} {h}\n" for p, h in sorted(files.items())).encode())


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


def _adapter_files(src: Path) -> list[tuple[str, Path]]:
    if src.is_file():
        return [(f"adapter/{src.name}", src)]
    out = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out.append((f"adapter/{p.relative_to(src).as_posix()}", p))
    return out


def make_bundle(conn: Connection, pk: int, detail: RunDetail, run_dir: Path, out_dir: Path, *,
                include_adapter: bool, created_by: str) -> RunBundle:
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
            disk = _adapter_files(src)
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
def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    if not name or name.startswith("/") or "\\" in name or p.is_absolute() or any(part in ("..", "") for part in p.parts):
        raise BadRequest(f"bundle member {name!r} has an unsafe path; refusing to import", param="path")
    return p.as_posix()


def verify_extract(bundle: Path, staging: Path) -> BundleManifest:
    """Extract ``bundle`` into ``staging`` while hashing every member, then check the members
    against MANIFEST.json exactly. Raises :class:`BadRequest` naming the first problem."""
    if not bundle.is_file():
        raise NotFound(f"bundle {str(bundle)!r} does not exist", param="path")
    seen: dict[str, tuple[str, int]] = {}
    manifest_raw: bytes | None = None
    try:
        with tarfile.open(bundle, "r:*") as tar:
            for member in tar:
                name = _safe_name(member.name.rstrip("/") if member.isdir() else member.name)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BadRequest(f"bundle member {name!r} is a link or device, not a file; refusing to import",
                                     param="path")
                if name in seen or (name == MANIFEST and manifest_raw is not None):
                    raise BadRequest(f"bundle member {name!r} appears twice", param="path")
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
                with open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                seen[name] = (h.hexdigest(), size)
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
    listed = {f.path: f for f in manifest.files}
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
def staging_dir(home: Path) -> Iterator[Path]:
    """A private directory under HALO_HOME/incoming (same filesystem as runs/, so moves are renames)."""
    path = home / "incoming" / f".staging-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _read_json(staging: Path, name: str, default: Any) -> Any:
    path = staging / name
    if not path.exists():
        return default
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BadRequest(f"bundle member {name} is not valid JSON: {exc}", param="path") from None


def _points(staging: Path) -> Iterator[tuple[int, str, float]]:
    path = staging / "metrics.jsonl"
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
                    yield step, str(name), float(value)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise BadRequest(f"metrics.jsonl:{lineno}: malformed line ({type(exc).__name__}: {exc})",
                                 param="path") from None


def import_bundle(db: Database, bundle: Path, home: Path, run_dir_of: Callable[[str], Path], *,
                  replace: bool) -> tuple[str, int]:
    """Verify ``bundle`` and make its run searchable here. ``run_dir_of(run_id)`` gives the run
    directory. Returns (run_id, files restored). Refuses an existing run unless ``replace``."""
    with staging_dir(home) as staging:
        manifest = verify_extract(bundle, staging)
        try:
            detail = RunDetail.model_validate_json((staging / "run.json").read_bytes())
        except ValidationError as exc:
            raise BadRequest(describe_validation_error(exc, what=f"{bundle.name}:run.json"), param="path") from None
        run_id = detail.run.run_id
        if run_id != manifest.run_id:
            raise BadRequest(f"run.json is for {run_id!r} but {MANIFEST} says {manifest.run_id!r}", param="path")
        run_dir: Path = run_dir_of(run_id)
        with db.read() as conn:
            exists = conn.scalar(select(runs.c.pk).where(runs.c.run_id == run_id)) is not None
        if (exists or run_dir.exists()) and not replace:
            where = "in the registry" if exists else f"on disk ({run_dir})"
            raise Conflict(f"run {run_id!r} already exists {where}; import with replace to overwrite it",
                           param="replace")
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, run_dir)
        staging.mkdir()  # the context manager removes it
        try:
            _insert(db, detail, run_dir, manifest)
        except BaseException:
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        return run_id, len(manifest.files)


def _insert(db: Database, detail: RunDetail, run_dir: Path, manifest: BundleManifest) -> None:
    r = detail.run
    last_ts = max(t for t in (r.created_at, r.started_at, r.finished_at) if t is not None)
    with db.write() as conn:
        old = conn.scalar(select(runs.c.pk).where(runs.c.run_id == r.run_id))
        if old is not None:
            remove_run_rows(conn, old, r.run_id)
        conn.execute(delete(deleted_runs).where(deleted_runs.c.run_id == r.run_id))
        pk = conn.execute(runs.insert().values(
            run_id=r.run_id, name=r.name, job_id=r.job_id, service=r.service, method=r.method,
            base_model=r.base_model, models=r.models or None, backend=r.backend, status=r.status.value,
            status_ts=utc(last_ts), status_seq=_IMPORTED_SEQ, created_at=utc(r.created_at),
            started_at=r.started_at and utc(r.started_at), finished_at=r.finished_at and utc(r.finished_at),
            last_event_at=utc(last_ts), duration_s=r.duration_s, last_step=r.last_step, total_steps=r.total_steps,
            spec=detail.spec or None, summary=detail.summary or None, error=r.error, notes=detail.notes,
            origin="imported",
        )).inserted_primary_key[0]
        if r.tags:
            conn.execute(run_tags.insert(), [{"run_pk": pk, "tag": t} for t in r.tags])
        write_points(db, conn, ((pk, n, s, v) for s, n, v in _points(run_dir)))
        power = []
        for lineno, line in enumerate((run_dir / "power.jsonl").read_text().splitlines()
                                      if (run_dir / "power.jsonl").exists() else [], 1):
            try:
                rec = json.loads(line)
                power.append({"run_pk": pk, "step": int(rec["step"]), "ts": utc(datetime.fromisoformat(rec["ts"])),
                              "watts": float(rec["watts"])})
            except (ValueError, KeyError, TypeError) as exc:
                raise BadRequest(f"power.jsonl:{lineno}: malformed line ({exc})", param="path") from None
        if power:
            conn.execute(power_samples.insert(), power)
        if detail.evals:
            conn.execute(eval_results.insert(), [
                {"run_pk": pk, "task": e.task, "metric": e.metric, "value": e.value,
                 "higher_is_better": e.higher_is_better, "num_samples": e.num_samples, "stderr": e.stderr,
                 "details": e.details or None, "source": e.source, "created_at": utc(e.created_at)}
                for e in detail.evals
            ])
        adapter_files = {f.path[len("adapter/"):]: f for f in manifest.files if f.path.startswith("adapter/")}
        if adapter_files:
            original = next((a for a in reversed(detail.artifacts) if a.kind == "adapter"), None)
            conn.execute(artifacts.insert().values(
                run_pk=pk, kind="adapter", format=original.format if original else "other",
                path=str(run_dir / "adapter"), sha256=tree_sha256({p: f.sha256 for p, f in adapter_files.items()}),
                size_bytes=sum(f.size_bytes for f in adapter_files.values()),
                step=original.step if original else None, created_at=utc(manifest.created_at),
            ))
        links = {(lk.parent_run_id, lk.child_run_id): lk for lk in (*detail.parents, *detail.children)}
        if links:
            stmt = db.insert(lineage).on_conflict_do_nothing()
            conn.execute(stmt, [{"parent_run_id": lk.parent_run_id, "child_run_id": lk.child_run_id,
                                 "relation": lk.relation, "step": lk.step, "cycle": lk.cycle,
                                 "created_at": utc(lk.created_at)} for lk in links.values()])


def created_by(version: str) -> str:
    return f"halo-registry {version} on {socket.gethostname()}"
