"""``embed-assets gc``: delete the artifacts no evaluation needs any more.

Artifacts are immutable and content-addressed, so a home only grows. What is kept:

- every file in the audited chain of every ``retrieval_eval`` materialization the Dagster
  instance records (an evaluation can always be audited and reproduced);
- the latest value of every asset (``assets/<asset>/latest.json``), which the next run reads;
- the embedding caches (``lancedb/embeddings_*``) and the teacher's score cache
  (``teacher/scores.sqlite``): they only save work.

Everything else under ``assets/``, ``models/``, ``beir/``, ``onnx/``, ``encoders/`` (the ONNX
exports the pipeline encodes with; a run rebuilds a missing one in seconds) and the
``lancedb/chunks_*`` tables goes. A folder (a model, a BEIR split, a LanceDB table) is kept whole when any file in
it is referenced. An object home (``s3://...``) is listed and cleaned through its filesystem.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import dagster as dg

from embed_assets.defs.audit import ROOT_ASSET, audit_chain, chain_links
from embed_assets.object_home import ObjectHome, forget, is_remote, parse_home, remote_of

FOLDER_KINDS = ("models", "beir", "onnx", "encoders")


@dataclass
class GarbageReport:
    kept_evaluations: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def _home_fs(home: str | Path):
    """The filesystem and root path of ``home``: a folder, or an object home's bucket and prefix."""
    if is_remote(home):
        obj = parse_home(str(home))
        return obj, obj.fs, obj.key()
    from fsspec.implementations.local import LocalFileSystem

    return None, LocalFileSystem(), str(Path(home).resolve())


def _ref_path(path: str, obj: ObjectHome | None) -> str | None:
    """A recorded file as a path on the home's filesystem (an object home's: from its URI, or the
    staging file's object), or None when it is not in this home."""
    if obj is None:
        return None if is_remote(path) else str(Path(path).resolve())
    uri = path if is_remote(path) else remote_of(path)
    return uri.split("://", 1)[1] if uri else None


def referenced_files(instance: dg.DagsterInstance, home: str | Path) -> tuple[set[str], int]:
    """Every file the recorded evaluations' chains name, and how many evaluations there are."""
    obj, fs, root = _home_fs(home)
    refs: set[str] = set()
    runs = {r.run_id for r in instance.fetch_materializations(dg.AssetKey(ROOT_ASSET), limit=10_000).records}
    for run_id in runs:
        chain = audit_chain(instance, run_id, verify=False)
        refs.update(_ref_path(f.path, obj) for link in chain_links(chain, set()) for f in link.files)
    for pointer in fs.glob(f"{root}/assets/**/latest.json"):
        refs.add(f"{pointer.rsplit('/', 1)[0]}/{json.loads(fs.cat_file(pointer))['file']}")
    refs.discard(None)
    return refs, len(runs)


def collect_garbage(instance: dg.DagsterInstance, home: str | Path, dry_run: bool = False) -> GarbageReport:
    """Delete (or with ``dry_run`` only list) what no kept evaluation and no latest value references;
    in an object home, the objects and their staging copies."""
    obj, fs, root = _home_fs(home)
    refs, evaluations = referenced_files(instance, home)
    ref_dirs = {str(parent) for f in refs for parent in PurePosixPath(f).parents}
    report = GarbageReport(kept_evaluations=evaluations)
    candidates = [
        p
        for p in fs.glob(f"{root}/assets/*/*")
        if fs.isfile(p) and not p.rsplit("/", 1)[-1].startswith(".") and not p.endswith("/latest.json")
    ]
    candidates += [p for kind in FOLDER_KINDS for p in fs.glob(f"{root}/{kind}/*") if fs.isdir(p)]
    candidates += fs.glob(f"{root}/lancedb/chunks_*.lance")
    deleted_rels = []
    for path in sorted(candidates, key=PurePosixPath):
        if path in refs or path in ref_dirs:
            continue
        report.deleted.append(obj.url(path[len(root) + 1 :]) if obj else path)
        report.bytes_freed += fs.du(path) if fs.isdir(path) else fs.size(path)
        if not dry_run:
            fs.rm(path, recursive=True)
            deleted_rels.append(path[len(root) + 1 :])
    if obj is not None and deleted_rels:
        for rel in deleted_rels:  # the staging copies go too, or the next push would restore them
            local = obj.staging / rel
            shutil.rmtree(local) if local.is_dir() else local.unlink(missing_ok=True)
        forget(obj, deleted_rels)
    return report
