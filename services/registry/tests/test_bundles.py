"""Bundles: made on one HALO_HOME, imported into a fresh one (searchable, comparable, same data);
tampered or malformed bundles refused with an error naming the problem."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from halo_common.errors import BadRequest, Conflict, NotFound
from halo_registry.core.bundles import MANIFEST
from halo_registry.core.store import RegistryStore
from halo_registry.testing import RegistryDb, RunEmitter, loss_at
from halo_schemas.registry import (
    EvalRecordRequest,
    EvalResultIn,
    RunBundleRequest,
    RunCompareRequest,
    RunCostRequest,
    RunImportRequest,
    RunMetricsRequest,
    RunNoteRequest,
    RunSearch,
)
from halo_schemas.replay import ReplayManifest


def make_source_run(store: RegistryStore) -> RunEmitter:
    parent = RunEmitter("run-parent01")
    em = RunEmitter("run-bundled01", method="sft", base_model="tiny-llama", backend="cuda",
                    spec={"name": "shipped", "tags": ["ship"], "lr": 2e-4, "parent_run_id": parent.run_id,
                          "fork_step": 5})
    run_dir = store.run_dir(em.run_id)
    adapter = run_dir / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "sub" / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (run_dir / "replay.json").write_text(ReplayManifest(
        run_id=em.run_id, method="sft", spec=em.spec, argv=["halo-forge", "train", "sft"], backend="cuda",
        packages={"torch": "2.13.0"}).model_dump_json())
    evs = [em.started(total_steps=30)]
    evs += [em.progressed(s, total_steps=30, loss=loss_at(s), power_watts=250.0 + s) for s in range(30)]
    evs += [em.artifact(str(adapter), step=29), em.finished(summary={"final_loss": loss_at(29)})]
    store.apply_events(evs)
    store.record_eval(EvalRecordRequest(run_id=em.run_id, results=[
        EvalResultIn(task="gsm8k", metric="accuracy", value=0.33, num_samples=50)]))
    store.note(RunNoteRequest(run_id=em.run_id, notes="best so far"))
    return em


@pytest.fixture
def other_store(tmp_path: Path) -> Iterator[RegistryStore]:
    """A second machine: its own HALO_HOME and SQLite database."""
    s = RegistryStore.open(None, tmp_path / "machine-b", version="test")
    yield s
    s.close()


def test_bundle_imports_into_a_fresh_home(store: RegistryStore, registry_db: RegistryDb,
                                          other_store: RegistryStore) -> None:
    em = make_source_run(store)
    bundle = store.bundle(RunBundleRequest(run_id=em.run_id))
    assert Path(bundle.path).parent == store.paths.home / "bundles" and bundle.files == 9

    local = RunEmitter("run-local01", base_model="tiny-llama", spec={"lr": 1e-4})
    other_store.apply_events([local.started()] + [local.progressed(s, loss=loss_at(s) + 0.2) for s in range(30)]
                             + [local.finished()])
    imported = other_store.import_bundle(RunImportRequest(path=bundle.path))
    assert (imported.run_id, imported.run.origin, imported.files) == (em.run_id, "imported", 9)

    # Searchable and identical where it matters.
    assert [r.run_id for r in other_store.search(RunSearch(tag=["ship"])).items] == [em.run_id]
    src, dst = store.get(em.run_id), other_store.get(em.run_id)
    assert dst.run.model_dump(exclude={"origin"}) == src.run.model_dump(exclude={"origin"})
    assert (dst.spec, dst.summary, dst.notes, dst.evals, dst.parents) == (src.spec, src.summary, src.notes,
                                                                           src.evals, src.parents)
    assert dst.parents[0].step == 5
    assert dst.metrics == src.metrics
    assert other_store.metrics(RunMetricsRequest(run_id=em.run_id)) == store.metrics(RunMetricsRequest(run_id=em.run_id))
    # Same measured energy; priced at machine B's own rate.
    here, there = store.cost(RunCostRequest(run_id=em.run_id)), other_store.cost(RunCostRequest(run_id=em.run_id))
    assert (there.source, there.kwh, there.samples) == ("measured", here.kwh, 30)
    assert (there.currency, there.price_per_kwh) == ("USD", 0.30)
    # The adapter came along byte for byte, and the replay manifest with it.
    new_dir = other_store.run_dir(em.run_id)
    src_dir = store.run_dir(em.run_id)
    for rel in ("adapter/adapter_config.json", "adapter/sub/adapter_model.safetensors", "replay.json"):
        assert (new_dir / rel).read_bytes() == (src_dir / rel).read_bytes(), rel
    assert [(a.kind, a.path, a.size_bytes) for a in dst.artifacts] == [("adapter", str(new_dir / "adapter"),
                                                                        8 + 256 * 64)]
    assert other_store.replay(em.run_id).manifest.packages == {"torch": "2.13.0"}

    # And comparable with a local run there.
    cmp = other_store.compare(RunCompareRequest(run_ids=[local.run_id, em.run_id]))
    assert cmp.metrics == ["loss"] and {len(s[0].values) for s in cmp.series.values()} == {30}
    assert {d.key for d in cmp.config_diff} >= {"lr", "run.backend", "parent_run_id"}

    with pytest.raises(Conflict, match="already exists"):
        other_store.import_bundle(RunImportRequest(path=bundle.path))
    again = other_store.import_bundle(RunImportRequest(path=bundle.path, replace=True))
    assert again.run_id == em.run_id and other_store.search(RunSearch()).total == 2


def _rewrite(bundle: Path, out: Path, edit) -> Path:  # noqa: ANN001
    """Copy a bundle member by member, letting ``edit(name, data)`` return new bytes (or None to drop)."""
    with tarfile.open(bundle, "r:gz") as src, tarfile.open(out, "w:gz") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isfile() else None
            data = edit(m.name, data)
            if data is None:
                continue
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


@pytest.fixture
def bundle_path(store: RegistryStore) -> Path:
    em = make_source_run(store)
    return Path(store.bundle(RunBundleRequest(run_id=em.run_id)).path)


def test_tampered_member_is_refused(bundle_path: Path, other_store: RegistryStore, tmp_path: Path) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if name == "metrics.jsonl":
            lines = data.decode().splitlines()
            rec = json.loads(lines[3])
            rec["loss"] = 0.0001  # a nicer-looking curve
            lines[3] = json.dumps(rec)
            return ("\n".join(lines) + "\n").encode()
        return data

    bad = _rewrite(bundle_path, tmp_path / "tampered.tar.gz", edit)
    with pytest.raises(BadRequest, match=r"checksum mismatch for 'metrics.jsonl'.*modified or corrupted"):
        other_store.import_bundle(RunImportRequest(path=str(bad)))
    assert other_store.search(RunSearch()).total == 0
    assert not other_store.run_dir("run-bundled01").exists()
    assert list((other_store.paths.home / "incoming").iterdir()) == []


@pytest.mark.parametrize(("edit", "message"), [
    (lambda n, d: None if n == "evals.json" else d, "lists 'evals.json' but the bundle does not contain it"),
    (lambda n, d: None if n == MANIFEST else d, "has no MANIFEST.json"),
    (lambda n, d: b"{not json" if n == MANIFEST else d, "MANIFEST.json"),
    (lambda n, d: d.replace(b'"run-bundled01"', b'"run-other"', 1) if n == MANIFEST else d, "run.json is for"),
])
def test_malformed_bundles_are_refused(bundle_path: Path, other_store: RegistryStore, tmp_path: Path, edit,  # noqa: ANN001
                                       message: str) -> None:
    bad = _rewrite(bundle_path, tmp_path / "bad.tar.gz", edit)
    with pytest.raises(BadRequest, match=message):
        other_store.import_bundle(RunImportRequest(path=str(bad)))
    assert other_store.search(RunSearch()).total == 0


def test_extra_and_unsafe_members_are_refused(bundle_path: Path, other_store: RegistryStore, tmp_path: Path) -> None:
    extra = tmp_path / "extra.tar.gz"
    with tarfile.open(bundle_path, "r:gz") as src, tarfile.open(extra, "w:gz") as dst:
        for m in src.getmembers():
            dst.addfile(m, src.extractfile(m))
        info = tarfile.TarInfo("adapter/backdoor.py")
        info.size = 4
        dst.addfile(info, io.BytesIO(b"evil"))
    with pytest.raises(BadRequest, match="'adapter/backdoor.py' is not listed"):
        other_store.import_bundle(RunImportRequest(path=str(extra)))

    for name in ("../escape.txt", "/etc/passwd-copy"):
        unsafe = tmp_path / "unsafe.tar.gz"
        with tarfile.open(unsafe, "w:gz") as dst:
            info = tarfile.TarInfo(name)
            info.size = 1
            dst.addfile(info, io.BytesIO(b"x"))
        with pytest.raises(BadRequest, match="unsafe path"):
            other_store.import_bundle(RunImportRequest(path=str(unsafe)))
    link = tmp_path / "link.tar.gz"
    with tarfile.open(link, "w:gz") as dst:
        info = tarfile.TarInfo("adapter/weights")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        dst.addfile(info)
    with pytest.raises(BadRequest, match=r"'adapter/weights' is a symbolic link \(to '/etc/passwd'\)"):
        other_store.import_bundle(RunImportRequest(path=str(link)))
    assert not (tmp_path / "escape.txt").exists()


def test_not_a_bundle(other_store: RegistryStore, tmp_path: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b this is not gzip at all" * 10)
    with pytest.raises(BadRequest, match="not a readable Halo run bundle"):
        other_store.import_bundle(RunImportRequest(path=str(junk)))
    with pytest.raises(NotFound, match="does not exist"):
        other_store.import_bundle(RunImportRequest(path=str(tmp_path / "missing.tar.gz")))


def test_bundle_without_adapter(store: RegistryStore, other_store: RegistryStore) -> None:
    em = make_source_run(store)
    b = store.bundle(RunBundleRequest(run_id=em.run_id, include_adapter=False))
    assert b.files == 7
    other_store.import_bundle(RunImportRequest(path=b.path))
    assert other_store.get(em.run_id).artifacts == []


def test_bundle_carries_exports_and_merged_models_on_request(store: RegistryStore, other_store: RegistryStore,
                                                             tmp_path: Path) -> None:
    """--artifacts: a GGUF export (one file) and a merged HF model (a directory) travel with the run and
    come back as artifact rows at their new home, byte for byte, with kind, format, quant and verify
    figures; without it the bundle is the same as before. A deleted export is simply left out."""
    from halo_common.files import dataset_fingerprint, sha256_file

    em = make_source_run(store)
    gguf = tmp_path / "exports" / "shipped-q8.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF" + bytes(range(200)) * 10)
    merged = tmp_path / "exports" / "shipped-merged"
    (merged / "nested").mkdir(parents=True)
    (merged / "config.json").write_text('{"model_type": "llama"}')
    (merged / "nested" / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    gone = tmp_path / "exports" / "deleted.gguf"
    ev_gguf = em.artifact(str(gguf), kind="export", format="gguf", sha256=sha256_file(gguf)).model_copy(
        update={"quant": "q8", "status": "verified", "details": {"top1_agreement": 0.99}})
    store.apply_events([ev_gguf, em.artifact(str(merged), kind="model", format="hf"),
                        em.artifact(str(gone), kind="export", format="gguf")])

    without = store.bundle(RunBundleRequest(run_id=em.run_id))
    assert without.files == 9
    b = store.bundle(RunBundleRequest(run_id=em.run_id, include_artifacts=True))
    assert b.files == 9 + 3
    other_store.import_bundle(RunImportRequest(path=b.path))
    arts = {a.format + "/" + a.kind: a for a in other_store.get(em.run_id).artifacts}
    home = other_store.run_dir(em.run_id) / "artifacts"
    g = arts["gguf/export"]
    assert Path(g.path).parent.parent == home and Path(g.path).read_bytes() == gguf.read_bytes()
    assert (g.quant, g.status, g.details["top1_agreement"], g.sha256) == ("q8", "verified", 0.99, sha256_file(gguf))
    assert g.details["imported_from"] == str(gguf)
    m = arts["hf/model"]
    assert Path(m.path).parent == home and (Path(m.path) / "nested" / "model.safetensors").read_bytes() == \
        (merged / "nested" / "model.safetensors").read_bytes()
    assert (m.sha256, m.size_bytes) == dataset_fingerprint(merged)
    assert not any(a.path.endswith("deleted.gguf") for a in arts.values())


def test_artifact_members_must_match_an_export_of_the_run(store: RegistryStore, other_store: RegistryStore,
                                                          tmp_path: Path) -> None:
    """artifacts/<id>/… is accepted only for an export or merged model run.json lists under that id."""
    em = make_source_run(store)
    b = Path(store.bundle(RunBundleRequest(run_id=em.run_id)).path)
    forged = tmp_path / "forged.tar.gz"
    with tarfile.open(b) as src, tarfile.open(forged, "w:gz") as dst:
        members = {m.name: src.extractfile(m).read() for m in src if m.isfile()}
        payload = b"#!/bin/sh\necho owned\n"
        manifest = json.loads(members[MANIFEST])
        from halo_common.files import sha256_bytes

        manifest["files"].append({"path": "artifacts/999/run.sh", "sha256": sha256_bytes(payload),
                                  "size_bytes": len(payload)})
        members[MANIFEST] = json.dumps(manifest).encode()
        members["artifacts/999/run.sh"] = payload
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with pytest.raises(BadRequest, match="artifacts/999/ is not an export"):
        other_store.import_bundle(RunImportRequest(path=str(forged)))
    assert not other_store.run_dir(em.run_id).exists()
    for bad in ("artifacts/x/run.sh", "artifacts/run.sh"):
        with pytest.raises(BadRequest, match="is not one of the run's files"):
            from halo_registry.core.bundles import check_member_name

            check_member_name(bad)


def test_consistent_but_malformed_content_is_refused_by_line(bundle_path: Path, other_store: RegistryStore,
                                                              tmp_path: Path) -> None:
    """A bundle whose manifest was rewritten to match a broken member: the checksums pass, the
    content check names the file and line."""
    import hashlib

    members: dict[str, bytes] = {}
    with tarfile.open(bundle_path, "r:gz") as src:
        for m in src.getmembers():
            members[m.name] = src.extractfile(m).read()
    lines = members["metrics.jsonl"].decode().splitlines()
    lines[1] = '{"step": "two", "loss": 1.0}'
    members["metrics.jsonl"] = ("\n".join(lines) + "\n").encode()
    manifest = json.loads(members[MANIFEST])
    for f in manifest["files"]:
        f["sha256"] = hashlib.sha256(members[f["path"]]).hexdigest()
        f["size_bytes"] = len(members[f["path"]])
    members[MANIFEST] = json.dumps(manifest).encode()
    crafted = tmp_path / "crafted.tar.gz"
    with tarfile.open(crafted, "w:gz") as dst:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with pytest.raises(BadRequest, match=r"metrics.jsonl:2: malformed line"):
        other_store.import_bundle(RunImportRequest(path=str(crafted)))
    assert other_store.search(RunSearch()).total == 0 and not other_store.run_dir("run-bundled01").exists()
