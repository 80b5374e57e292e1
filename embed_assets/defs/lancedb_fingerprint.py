"""The content fingerprint of a LanceDB table, for the retrain sensor, read incrementally.

The value: the number of live rows and the sum, modulo 2**128, of a SHA-256 of each live row's
values in the watched columns. A sum is a multiset digest: row order and fragment boundaries do
not enter it, so a compaction (``table.optimize()``) or a rewrite in another order changes
nothing, while an added, deleted or updated row changes it (two equal rows add up; XOR would
cancel them). The row hashes are computed by the query engine (DataFusion's ``sha256``), so no
row's text is ever turned into Python objects.

Why it can be incremental: a Lance table version lists fragments; a fragment's data files are
immutable, only its deletion file changes as its rows are deleted (an update is a delete plus an
append). pylance (``lance``) gives each fragment's metadata, so a fragment's digest is cached
under that metadata, and its rows' hashes under the metadata without the deletion file: a tick
reads the fragment list, the columns of new fragments only, and the row addresses (no column
data) of old fragments with new deletions. Tables on object storage too: pylance opens them with
the connection's storage options.

The cache only saves work: its keys are content (the fragment's metadata, the watched columns'
fields), so a stale entry is never looked up, and where it is lost, unwritable or unreadable the
tick recomputes and gets the same value. Where pylance cannot answer (a LanceDB Cloud table has
no Lance dataset to open) or the rows do not add up, every row is hashed through LanceDB's own
query: slower, the same value.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from embed_assets.hashing import stable_hash
from embed_assets.home import default_home
from embed_assets.object_home import local_root

logger = logging.getLogger("embed_assets.sensors")

PREFIX = "rows-"  # tells the fingerprints of this scheme from the older full-read hash (a cursor's)
_SCHEME = "lancedb-rows-v1"  # bump when the row encoding changes: it keys every cache entry
_MOD = 1 << 128
_STRINGS = (pa.string(), pa.large_string(), pa.string_view())
_BATCH = 1 << 16  # rows per batch read back: small batches spend their time in Python
_NO_OFFSETS = np.zeros(0, np.uint32)
_NO_HASHES = np.zeros((0, 16), np.uint8)


@dataclass(frozen=True)
class Fragment:
    """One fragment of the table version (a ``lance.LanceFragment``), keyed for the cache."""

    lance: Any
    state_key: str  # its whole metadata: the digest of its live rows
    data_key: str  # its metadata without the deletion file: its rows' hashes
    physical_rows: int
    has_deletions: bool

    @property
    def id(self) -> int:
        return self.lance.fragment_id


def lancedb_fingerprint(
    uri: str, table: str, columns: list[str], cache_dir: str | Path | None = None
) -> str | None:
    """A hash of the table's rows in ``columns``: content, not the table's version number,
    which every compaction bumps. None when the table or a column is missing.

    ``cache_dir`` holds what makes the next call incremental (default: the artifact home's
    ``sensor_cache``, ``$EMBED_ASSETS_HOME`` or ``.embed_assets``).
    """
    import lancedb

    try:
        tbl = lancedb.connect(uri).open_table(table)
        schema = tbl.schema
    except Exception:  # a missing table is a skip, not a sensor failure
        return None
    if any(c not in schema.names for c in columns):
        return None
    try:
        count, total = _incremental(tbl, columns, _cache_root(cache_dir))
    except Exception as e:  # pylance cannot open this table, or the rows did not add up
        logger.info("LanceDB fingerprint of %s: full read (%s)", table, e)
        try:
            count, total = _full_read(tbl, schema, columns)
        except Exception:
            logger.warning("LanceDB fingerprint of %s failed", table, exc_info=True)
            return None
    return PREFIX + stable_hash([columns, count, f"{total:032x}"])


def legacy_lancedb_fingerprint(uri: str, table: str, columns: list[str]) -> str | None:
    """The LanceDB fingerprint before :func:`lancedb_fingerprint`: every row read, serialised and
    sorted, O(table) a tick. Kept for one thing: the sensor compares a cursor written by it with
    it once, so that upgrading requests no run for an unchanged table."""
    import lancedb

    try:
        rows = lancedb.connect(uri).open_table(table).to_arrow().select(columns)
    except Exception:  # a missing table or column is a skip, not a sensor failure
        return None
    return stable_hash(sorted(json.dumps(r, sort_keys=True, default=str) for r in rows.to_pylist()))


def _cache_root(cache_dir: str | Path | None) -> Path:
    # Files in the artifact home, next to the runs' own caches. Not the Dagster cursor, which
    # should stay small (this holds a line per fragment and 20 bytes per row); not memory alone,
    # since the code server that evaluates sensors restarts on every reload and deploy.
    if cache_dir is not None:
        return Path(cache_dir)
    return local_root(default_home()) / "sensor_cache"


def _incremental(tbl, columns: list[str], cache_root: Path) -> tuple[int, int]:
    ds = tbl.to_lance()  # pinned at the table's version: the fragment list and every scan agree
    fragments = list_fragments(ds, columns)
    cache = _Cache(cache_root / f"lancedb-{stable_hash(ds.uri)}")
    known = cache.load_digests()
    digests = {f.id: known[f.state_key] for f in fragments if f.state_key in known}
    # Data files seen before (with new deletions, or back after a restore): their cached row
    # hashes, summed at the rows now live; the row addresses tell which, with no column read.
    stored = {f.id: rows for f in fragments if f.id not in digests and (rows := cache.load_rows(f.data_key))}
    deleted_from = [f for f in fragments if f.id in stored and f.has_deletions]
    live = live_offsets(ds, deleted_from) if deleted_from else {}
    for f in fragments:
        if f.id in stored:
            wanted = live.get(f.id, _NO_OFFSETS) if f.has_deletions else np.arange(f.physical_rows)
            if (digest := _digest_at(*stored[f.id], wanted)) is not None:
                digests[f.id] = (len(wanted), digest)
    if compute := [f for f in fragments if f.id not in digests]:
        rows = row_hashes(ds, columns, None if len(compute) == len(fragments) else compute)  # None: all
        for f in compute:
            offsets, hashes = rows.get(f.id, (_NO_OFFSETS, _NO_HASHES))
            cache.save_rows(f.data_key, offsets, hashes)
            digests[f.id] = (len(offsets), _digest(hashes))
    count = sum(n for n, _ in digests.values())
    if count != ds.count_rows():  # a cache or listing gone wrong must not pass for content
        raise ValueError(f"{count} rows in the fragments' digests, {ds.count_rows()} in the table")
    cache.save({f.state_key: digests[f.id] for f in fragments}, {f.data_key for f in fragments})
    return count, sum(d for _, d in digests.values()) % _MOD


def list_fragments(ds, columns: list[str]) -> list[Fragment]:
    """The fragments of the pylance dataset ``ds``, keyed by their metadata (every field but the
    deletion file in the data key, so a field pylance adds one day can only cause a recompute)
    and by the watched columns' fields (a rename or a type change re-keys every fragment)."""
    fields = [[c, ds.lance_schema.field(c).id(), str(ds.schema.field(c).type)] for c in columns]
    fragments = []
    for fragment in ds.get_fragments():
        entry = fragment.metadata.to_json()
        state_key = stable_hash([_SCHEME, fields, entry], 32)
        deletion = entry.pop("deletion_file")
        fragments.append(
            Fragment(
                lance=fragment,
                state_key=state_key,
                data_key=stable_hash([_SCHEME, fields, entry], 32),
                physical_rows=entry["physical_rows"],
                has_deletions=deletion is not None,
            )
        )
    return fragments


def _full_read(tbl, schema: pa.Schema, columns: list[str]) -> tuple[int, int]:
    """Every row hashed by LanceDB's own query engine: no pylance, no cache."""
    result = tbl.search().select({"h": _row_sql(schema, columns)}).to_batches(batch_size=_BATCH).read_all()
    return result.num_rows, _digest(_hash_bytes(result["h"]))


# -- Reading rows ---------------------------------------------------------------------------------


def _row_sql(schema: pa.Schema, columns: list[str]) -> str:
    """SHA-256 of a row's values, each as its UTF-8 length, ':' and the text ('~' for null):
    unambiguous, whatever the text holds."""
    parts = []
    for name in columns:
        value = f"`{name}`" if schema.field(name).type in _STRINGS else f"CAST(`{name}` AS VARCHAR)"
        parts.append(f"coalesce(concat(CAST(octet_length({value}) AS VARCHAR), ':', {value}), '~')")
    return f"sha256(concat({', '.join(parts)}))"


def live_offsets(ds, fragments: list[Fragment]) -> dict[int, np.ndarray]:
    """The live row offsets of these fragments, sorted: row addresses only, no column is read."""
    scan = ds.scanner(columns=[], with_row_address=True, fragments=[f.lance for f in fragments])
    addresses = scan.to_table()["_rowaddr"].to_numpy()
    order = _sorting(addresses)
    return {fid: offsets for fid, offsets, _ in _by_fragment(addresses[order])}


def row_hashes(
    ds, columns: list[str], fragments: list[Fragment] | None
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{fragment id: (sorted live offsets, their rows' 128-bit hashes as (n, 16) bytes)} of these
    fragments (None: all), read by one pylance scan."""
    scan = ds.scanner(
        columns={"h": _row_sql(ds.schema, columns)},
        with_row_address=True,
        fragments=None if fragments is None else [f.lance for f in fragments],
        batch_size=_BATCH,
    )
    result = scan.to_table()
    if result.num_rows == 0:
        return {}
    addresses = result["_rowaddr"].to_numpy()
    order = _sorting(addresses)
    hashes = _hash_bytes(result["h"])[order]
    return {fid: (offsets, hashes[rows]) for fid, offsets, rows in _by_fragment(addresses[order])}


def _hash_bytes(column: pa.ChunkedArray) -> np.ndarray:
    """SHA-256 values as (n, 16) bytes: their first 128 bits, with no Python object per row."""
    sha = column.combine_chunks().cast(pa.binary(32))
    raw = np.frombuffer(sha.buffers()[1], np.uint8)[sha.offset * 32 : (sha.offset + len(sha)) * 32]
    return raw.reshape(-1, 32)[:, :16]


def _sorting(addresses: np.ndarray) -> np.ndarray | slice:
    """What sorts the addresses (a scan returns them sorted already, so mostly nothing)."""
    return slice(None) if np.all(addresses[1:] >= addresses[:-1]) else np.argsort(addresses, kind="stable")


def _by_fragment(addresses: np.ndarray) -> Iterator[tuple[int, np.ndarray, slice]]:
    """(fragment id, its offsets, its slice) over sorted row addresses (fragment id << 32 | offset)."""
    fragment = addresses >> np.uint64(32)
    bounds = [0, *(np.flatnonzero(fragment[1:] != fragment[:-1]) + 1).tolist(), len(addresses)]
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        if end > start:
            offsets = (addresses[start:end] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
            yield int(fragment[start]), offsets, slice(start, end)


def _digest(hashes: np.ndarray) -> int:
    """The sum modulo 2**128 of (n, 16) little-endian row hashes, in 16-bit limbs (exact in
    uint64 up to 2**48 rows)."""
    limbs = np.ascontiguousarray(hashes).view("<u2").sum(axis=0, dtype=np.uint64)
    return sum(int(limb) << (16 * k) for k, limb in enumerate(limbs)) % _MOD


def _digest_at(offsets: np.ndarray, hashes: np.ndarray, wanted: np.ndarray) -> int | None:
    """The digest of the stored rows at offsets ``wanted``; None when some are not stored."""
    at = np.searchsorted(offsets, wanted)
    if len(wanted) and (at[-1] >= len(offsets) or not np.array_equal(offsets[at], wanted)):
        return None
    return _digest(hashes[at])


# -- The cache ------------------------------------------------------------------------------------


class _Cache:
    """``digests.json``: {fragment state key: [live rows, digest]} of the last version seen; and
    ``rows/<data key>.npz``: each fragment's row offsets and hashes, for when it gets deletions.

    Both are pruned to the last version's fragments, so they stay the size of one table version's
    metadata plus 20 bytes a row. Reads that fail are a miss; writes that fail are skipped."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load_digests(self) -> dict[str, tuple[int, int]]:
        try:
            entries = json.loads((self.folder / "digests.json").read_text(encoding="utf-8"))
            return {k: (int(n), int(d, 16)) for k, (n, d) in entries.items()}
        except (OSError, ValueError, TypeError, AttributeError):
            return {}

    def load_rows(self, data_key: str) -> tuple[np.ndarray, np.ndarray] | None:
        try:
            with np.load(self.folder / "rows" / f"{data_key}.npz", allow_pickle=False) as stored:
                offsets, hashes = stored["offsets"], stored["hashes"]
        except (OSError, ValueError, KeyError):
            return None
        if offsets.dtype != np.uint32 or hashes.shape != (len(offsets), 16) or hashes.dtype != np.uint8:
            return None
        return offsets, hashes

    def save_rows(self, data_key: str, offsets: np.ndarray, hashes: np.ndarray) -> None:
        self._write(f"rows/{data_key}.npz", lambda f: np.savez(f, offsets=offsets, hashes=hashes))

    def save(self, digests: dict[str, tuple[int, int]], data_keys: set[str]) -> None:
        text = json.dumps({k: [n, f"{d:032x}"] for k, (n, d) in digests.items()})
        if self.load_digests() != digests:
            self._write("digests.json", lambda f: f.write(text.encode()))
        try:
            for path in (self.folder / "rows").glob("*.npz"):
                if path.stem not in data_keys:
                    path.unlink(missing_ok=True)
        except OSError:
            pass

    def _write(self, name: str, write) -> None:
        path = self.folder / name
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                write(f)
            os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
        except OSError as e:
            logger.warning("LanceDB fingerprint cache %s not written: %s", path, e)
            tmp.unlink(missing_ok=True)
