"""``embed-assets audit``: the chain behind an evaluation, checked against what is on disk.

Dagster records, with every materialization, the storage id of each input's materialization it
read (``dagster/input_event_pointer/<asset>``), the code version and the data version. Starting
from a ``retrieval_eval`` materialization, :func:`audit_chain` follows those pointers back to the
documents, and for each link collects its run, versions, config and the files it recorded with
their SHA-256 (``value_path``/``value_sha256`` from the IO manager, ``artifacts`` from the asset);
then it hashes every file again (an object home's objects through its filesystem). A missing or
changed file is a failed audit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dagster as dg

from embed_assets.lineage import file_sha256, stream_sha256
from embed_assets.object_home import is_remote, open_uri, remote_of

POINTER_TAG = "dagster/input_event_pointer/"
ROOT_ASSET = "retrieval_eval"


class AuditError(LookupError):
    """No evaluation to audit (unknown run, or nothing materialized)."""


@dataclass
class FileCheck:
    path: str
    expected_sha256: str
    status: str  # ok | changed | missing


@dataclass
class Link:
    asset: str
    run_id: str
    storage_id: int
    data_version: str | None
    code_version: str | None
    config: dict
    files: list[FileCheck] = field(default_factory=list)
    inputs: list[Link] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(f.status == "ok" for f in self.files) and all(i.ok for i in self.inputs)


def _record_for(
    instance: dg.DagsterInstance, asset: str, storage_id: int | None = None, run_id: str | None = None
):
    key = dg.AssetKey(asset)
    if storage_id is not None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(key, storage_ids=[storage_id]), limit=1
        )
        return records.records[0] if records.records else None
    cursor = None
    while True:  # newest first; a run id narrows it to that run's materialization
        page = instance.fetch_materializations(key, limit=100, cursor=cursor)
        for record in page.records:
            if run_id is None or record.run_id == run_id:
                return record
        if not page.has_more:
            return None
        cursor = page.cursor


def _files(metadata: dict) -> dict[str, str]:
    files = {}
    if "value_path" in metadata and "value_sha256" in metadata:
        files[str(metadata["value_path"].value)] = str(metadata["value_sha256"].value)
    if "artifacts" in metadata:
        files.update(metadata["artifacts"].value)
    return files


def _check(path: str, expected: str) -> FileCheck:
    """Hash the file again: a local one, or the object an object home holds (a ``value_path`` URI,
    or a file of its staging folder on this host, which is hashed from the store, not the copy)."""
    uri = path if is_remote(path) else remote_of(path)
    if uri is not None:
        try:
            with open_uri(uri) as f:
                return FileCheck(path, expected, "ok" if stream_sha256(f) == expected else "changed")
        except FileNotFoundError:
            return FileCheck(path, expected, "missing")
    if not Path(path).is_file():
        return FileCheck(path, expected, "missing")
    return FileCheck(path, expected, "ok" if file_sha256(path) == expected else "changed")


# Assets configured through a resource rather than their own op config.
RESOURCE_OF = {"training_recipe": "recipe"}


def _config_of(run_config: dict, asset: str) -> dict:
    """What the run configured for ``asset``: its op config, or its resource's config."""
    if asset in RESOURCE_OF:
        section, name = run_config.get("resources") or {}, RESOURCE_OF[asset]
    else:
        section, name = run_config.get("ops") or {}, asset
    return (section.get(name) or {}).get("config") or {}


def audit_chain(instance: dg.DagsterInstance, run_id: str | None = None, verify: bool = True) -> Link:
    """The lineage of one ``retrieval_eval`` materialization: that of ``run_id``, or the latest.

    Raises:
        AuditError: no such run, or it materialized no evaluation.
    """
    root = _record_for(instance, ROOT_ASSET, run_id=run_id)
    if root is None:
        where = f"run {run_id}" if run_id else "this Dagster instance"
        raise AuditError(
            f"no {ROOT_ASSET} materialization in {where} (DAGSTER_HOME: {instance.root_directory})"
        )
    configs: dict[str, dict] = {}  # run id -> its run config

    def link(asset: str, record) -> Link:
        mat = record.asset_materialization
        tags = mat.tags or {}
        if record.run_id not in configs:
            run = instance.get_run_by_id(record.run_id)
            configs[record.run_id] = (run.run_config if run else {}) or {}
        node = Link(
            asset=asset,
            run_id=record.run_id,
            storage_id=record.storage_id,
            data_version=tags.get("dagster/data_version"),
            code_version=tags.get("dagster/code_version"),
            config=_config_of(configs[record.run_id], asset),
        )
        node.files = [
            _check(p, sha) if verify else FileCheck(p, sha, "unchecked")
            for p, sha in sorted(_files(mat.metadata).items())
        ]
        for tag, value in sorted(tags.items()):
            if tag.startswith(POINTER_TAG) and value.isdigit():
                upstream = tag[len(POINTER_TAG) :]
                parent = _record_for(instance, upstream, storage_id=int(value))
                if parent is not None:
                    node.inputs.append(link(upstream, parent))
        return node

    return link(ROOT_ASSET, root)


def chain_links(node: Link, seen: set[int] | None = None) -> list[Link]:
    """Every materialization of a chain once (a shared input appears under several links)."""
    seen = set() if seen is None else seen
    if node.storage_id in seen:
        return []
    seen.add(node.storage_id)
    return [node] + [n for i in node.inputs for n in chain_links(i, seen)]


def render_tree(root: Link) -> str:
    """The chain as an indented tree; each materialization in full once, then by reference."""
    lines: list[str] = []
    shown: set[int] = set()

    def walk(node: Link, depth: int) -> None:
        pad = "    " * depth
        mark = "ok" if node.ok else "FAILED"
        head = f"{pad}{'└── ' if depth else ''}{node.asset}  [{mark}]"
        if node.storage_id in shown:
            lines.append(f"{head}  (as above: data {node.data_version})")
            return
        shown.add(node.storage_id)
        lines.append(head)
        detail = pad + ("    " if depth else "") + "  "
        lines.append(f"{detail}run {node.run_id}  data {node.data_version}  code {node.code_version}")
        if node.config:
            lines.append(f"{detail}config {json.dumps(node.config, sort_keys=True)}")
        for f in node.files:
            lines.append(f"{detail}{f.status:<8} {f.expected_sha256[:16]}  {f.path}")
        for parent in node.inputs:
            walk(parent, depth + 1)

    walk(root, 0)
    links = chain_links(root, set())
    files = [f for n in links for f in n.files]
    bad = [f for f in files if f.status not in ("ok", "unchecked")]
    lines.append(
        f"\n{len(links)} materializations, {len(files)} files: "
        + ("all match their recorded SHA-256" if not bad else f"{len(bad)} missing or changed")
    )
    return "\n".join(lines)


def as_json(root: Link) -> str:
    return json.dumps({"ok": root.ok, "chain": asdict(root)}, indent=2)
