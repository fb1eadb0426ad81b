"""Artifacts of convert / merge runs: quant, status and verify details stored from RunArtifactAdded,
searched across runs, shown by id, deleted (files only inside HALO_HOME), and listed in the run's detail."""

from __future__ import annotations

from pathlib import Path

import pytest
from halo_common.errors import NotFound
from halo_registry.core.store import RegistryStore
from halo_schemas.events import RunArtifactAdded
from halo_schemas.registry import ArtifactDeleteRequest, ArtifactSearch
from halo_testing import RunEmitter

VERIFY = {"passed": True, "runtime": "llama.cpp", "quant": "q8", "top1_agreement": 0.97, "kl_mean": 0.004}


def _export(em: RunEmitter, path: str, *, quant: str, status: str, fmt: str = "gguf",
            files: list[str] | None = None) -> RunArtifactAdded:
    ev = em.artifact(path, kind="export", format=fmt, sha256="cd" * 32, size_bytes=4096)
    details = {"parents": ["run:run-parent"], "verify": {**VERIFY, "passed": status == "verified"}}
    if files:
        details["files"] = files
    return ev.model_copy(update={"quant": quant, "status": status, "details": details})


def _convert_run(store: RegistryStore, *events_of: tuple[str, str, str]) -> RunEmitter:
    em = RunEmitter(service="serve", method="convert", base_model="/models/tiny", spec={"source": "/models/tiny"})
    evs = [em.started(total_steps=3)]
    evs += [_export(em, p, quant=q, status=s, fmt="gguf" if p.endswith(".gguf") else "hf") for p, q, s in events_of]
    evs.append(em.finished())
    store.apply_events(evs)
    return em


def test_export_details_are_stored_and_listed_in_the_run(store: RegistryStore) -> None:
    em = _convert_run(store, ("/models/tiny-gguf-q8.gguf", "q8", "verified"))
    (a,) = store.get(em.run_id).artifacts
    assert (a.kind, a.format, a.quant, a.status, a.run_id) == ("export", "gguf", "q8", "verified", em.run_id)
    assert a.details["verify"]["top1_agreement"] == 0.97 and a.details["parents"] == ["run:run-parent"]
    assert a.id is not None and store.artifact(a.id).artifacts == [a]
    # The same event again (redelivery) updates the row, never duplicates it.
    store.apply_events([_export(em, "/models/tiny-gguf-q8.gguf", quant="q8", status="failed")])
    (again,) = store.get(em.run_id).artifacts
    assert (again.id, again.status) == (a.id, "failed")


def test_search_filters_across_runs_newest_first(store: RegistryStore) -> None:
    first = _convert_run(store, ("/m/a.gguf", "q8", "verified"), ("/m/b.gguf", "q4", "failed"))
    second = _convert_run(store, ("/m/c", "fp16", "unverified"))
    store.apply_events([RunEmitter(run_id=second.run_id).artifact("/m/samples.jsonl", kind="samples", format="jsonl")])
    everything = store.artifacts(ArtifactSearch()).artifacts
    assert len(everything) == 4
    keys = [(a.created_at, a.id) for a in everything]
    assert keys == sorted(keys, reverse=True)
    assert [a.path for a in store.artifacts(ArtifactSearch(status="failed")).artifacts] == ["/m/b.gguf"]
    assert {a.path for a in store.artifacts(ArtifactSearch(format="gguf")).artifacts} == {"/m/a.gguf", "/m/b.gguf"}
    assert {a.path for a in store.artifacts(ArtifactSearch(run_id=first.run_id)).artifacts} == {"/m/a.gguf", "/m/b.gguf"}
    assert [a.path for a in store.artifacts(ArtifactSearch(kind="samples")).artifacts] == ["/m/samples.jsonl"]
    assert len(store.artifacts(ArtifactSearch(limit=2)).artifacts) == 2


def test_delete_keeps_or_removes_files_only_inside_halo_home(store: RegistryStore, tmp_path: Path) -> None:
    home = store.paths.home
    inside = home / "models" / "tiny-q8.gguf"
    sidecar = home / "models" / "tiny-q8.gguf.halo_artifact.json"
    inside.parent.mkdir(parents=True, exist_ok=True)
    inside.write_bytes(b"GGUF")
    sidecar.write_text("{}")
    outside = tmp_path / "outside-export"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    em = RunEmitter(service="serve", method="convert")
    store.apply_events([em.started(), _export(em, str(inside), quant="q8", status="verified", files=[str(sidecar)]),
                        _export(em, str(outside), quant="fp16", status="verified", fmt="hf")])
    by_path = {a.path: a.id for a in store.get(em.run_id).artifacts}

    kept = store.delete_artifact(ArtifactDeleteRequest(id=by_path[str(outside)], keep_files=False))
    assert (kept.removed_paths, kept.kept_paths) == ([], [str(outside)]) and outside.is_dir()
    removed = store.delete_artifact(ArtifactDeleteRequest(id=by_path[str(inside)], keep_files=False))
    assert removed.removed_paths == [str(inside), str(sidecar)] and not inside.exists() and not sidecar.exists()
    assert store.get(em.run_id).artifacts == []
    with pytest.raises(NotFound) as err:
        store.artifact(by_path[str(inside)])
    assert err.value.param == "id"
