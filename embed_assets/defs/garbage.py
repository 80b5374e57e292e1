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
it is referenced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from embed_assets.defs.audit import ROOT_ASSET, audit_chain, chain_links

FOLDER_KINDS = ("models", "beir", "onnx", "encoders")


@dataclass
class GarbageReport:
    kept_evaluations: int = 0
    deleted: list[str] = field(default_factory=list)
    bytes_freed: int = 0


def _size(path: Path) -> int:
    return (
        path.stat().st_size
        if path.is_file()
        else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    )


def referenced_files(instance: dg.DagsterInstance, home: Path) -> tuple[set[Path], int]:
    """Every file the recorded evaluations' chains name, and how many evaluations there are."""
    refs: set[Path] = set()
    runs = {r.run_id for r in instance.fetch_materializations(dg.AssetKey(ROOT_ASSET), limit=10_000).records}
    for run_id in runs:
        chain = audit_chain(instance, run_id, verify=False)
        refs.update(Path(f.path).resolve() for link in chain_links(chain, set()) for f in link.files)
    for pointer in (home / "assets").glob("**/latest.json"):
        refs.add((pointer.parent / json.loads(pointer.read_text())["file"]).resolve())
    return refs, len(runs)


def collect_garbage(instance: dg.DagsterInstance, home: str | Path, dry_run: bool = False) -> GarbageReport:
    """Delete (or with ``dry_run`` only list) what no kept evaluation and no latest value references."""
    home = Path(home).resolve()
    refs, evaluations = referenced_files(instance, home)
    ref_dirs = {parent for f in refs for parent in f.parents}
    report = GarbageReport(kept_evaluations=evaluations)
    candidates: list[Path] = [
        p
        for p in (home / "assets").glob("*/*")
        if p.is_file() and p.name != "latest.json" and not p.name.startswith(".")
    ]
    candidates += [p for kind in FOLDER_KINDS for p in (home / kind).glob("*") if p.is_dir()]
    candidates += list((home / "lancedb").glob("chunks_*.lance"))
    for path in sorted(candidates):
        if path.resolve() in refs or path.resolve() in ref_dirs:
            continue
        report.deleted.append(str(path))
        report.bytes_freed += _size(path)
        if not dry_run:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return report
