"""An artifact home on object storage: ``EMBED_ASSETS_HOME=s3://bucket/prefix`` (``gs://``, ``az://``
through fsspec's filesystems for them).

The objects are the home. Code that needs real files (sentence-transformers folders, ONNX exports,
BEIR folders, LanceDB tables, SQLite caches, PNG reports) works in a **local staging folder**, a
mirror of the home: ``<$EMBED_ASSETS_STAGING or ~/.cache/embed_assets/staging>/<sha256(uri)[:16]>``
(the same path in every container of one image, so that paths a value records resolve on any
worker). :func:`pull` copies what the home has and the staging folder lacks, or has older;
:func:`push` uploads what changed in the staging folder since the last sync, every ``latest.json``
last. A manifest in the staging folder records each file's state at its last sync, so a push that
was killed is redone by the next one, and a file changed on both sides is never overwritten by a pull.
Object PUTs are atomic: a killed upload leaves no half object.

Endpoint and credentials come only from the standard environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``; for S3 the client is
pyarrow's, already a dependency) and are never written anywhere: values and metadata record
``s3://bucket/key`` URIs and staging paths only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from filelock import FileLock

from embed_assets.home import HOME_SETTING

STAGING_ENV = "EMBED_ASSETS_STAGING"
SCHEMES = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "az": "abfs", "abfs": "abfs", "abfss": "abfs"}
MANIFEST = ".embed_assets_sync.json"  # in the staging folder: each file's state at its last sync
MARKER = ".embed_assets_remote"  # in the staging folder: the home it mirrors
LATEST = "latest.json"
# Never pushed: locks, the sync's own files, temp files, the sensor's cache and SQLite's shared-memory
# index (rebuilt from the ``-wal`` file, which is pushed with its database).
_LOCAL_ONLY = re.compile(r"(^|/)(\.lock[^/]*|\.embed_assets_[^/]*|sensor_cache/.*|[^/]*\.tmp|[^/]*-shm)$")
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


class ObjectHomeError(ValueError):
    """A malformed, unreachable or read-only object-store home; the message names the setting."""


def is_remote(home: str | Path) -> bool:
    """Whether ``home`` is an object-store URI rather than a folder."""
    return "://" in str(home) and not str(home).startswith("file://")


@dataclass(frozen=True)
class ObjectHome:
    """A parsed object-store home: ``<scheme>://<bucket>/<prefix>``."""

    uri: str  # normalised: no trailing slash
    setting: str  # what set it, for error messages

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]

    @property
    def root(self) -> str:
        """``bucket/prefix``: the home's path on its filesystem."""
        return self.uri.split("://", 1)[1]

    def key(self, rel: str = "") -> str:
        return f"{self.root}/{rel}".rstrip("/")

    def url(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}".rstrip("/")

    @cached_property
    def staging(self) -> Path:
        """``<$EMBED_ASSETS_STAGING or ~/.cache/embed_assets/staging>/<sha256(uri)[:16]>``: a folder
        per home, so that two homes never share one."""
        parent = os.environ.get(STAGING_ENV) or Path.home() / ".cache" / "embed_assets" / "staging"
        folder = Path(parent) / hashlib.sha256(self.uri.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        if not (marker := folder / MARKER).is_file():
            marker.write_text(self.uri)
        return folder

    @cached_property
    def fs(self):
        return filesystem(self.scheme)

    def error(self, what: str, cause: BaseException | str) -> ObjectHomeError:
        return ObjectHomeError(f"{self.setting}={self.uri}: {what}: {scrub(str(cause))}")


def scrub(text: str) -> str:
    """``text`` with the secret key (if the environment has one) masked."""
    for var in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_KEY"):
        if secret := os.environ.get(var):
            text = text.replace(secret, "***")
    return text.strip().splitlines()[0] if text.strip() else text


def parse_home(home: str, setting: str = HOME_SETTING) -> ObjectHome:
    """The object-store home ``home`` names; :class:`ObjectHomeError` naming ``setting`` when malformed."""
    scheme, _, rest = str(home).partition("://")
    bucket, _, prefix = rest.strip("/").partition("/")
    if scheme not in SCHEMES:
        raise ObjectHomeError(
            f"{setting}={home}: unknown storage scheme {scheme!r}; use a folder or "
            + ", ".join(f"{s}://bucket/prefix" for s in ("s3", "gs", "az"))
        )
    if not _BUCKET.match(bucket) or "//" in prefix or any(p in (".", "..") for p in prefix.split("/")):
        raise ObjectHomeError(
            f"{setting}={home}: malformed storage URI; expected {scheme}://bucket/prefix "
            "(bucket: 3-63 lowercase letters, digits, dots and hyphens)"
        )
    return ObjectHome(f"{scheme}://{bucket}/{prefix}".rstrip("/"), setting)


def filesystem(scheme: str):
    """An fsspec filesystem for ``scheme``: S3 through pyarrow (endpoint, region and credentials
    from the standard AWS variables), the others through fsspec's registry."""
    if scheme != "s3":
        import fsspec

        return fsspec.filesystem(SCHEMES[scheme])
    import pyarrow.fs as pafs
    from fsspec.implementations.arrow import ArrowFSWrapper

    options = {"connect_timeout": 5.0, "request_timeout": 30.0}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        options["endpoint_override"] = endpoint
    if region := os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION"):
        options["region"] = region
    retry = pafs.AwsStandardS3RetryStrategy(max_attempts=3)
    return ArrowFSWrapper(pafs.S3FileSystem(retry_strategy=retry, **options))


def local_root(home: str | Path, setting: str = HOME_SETTING) -> Path:
    """Where code works on ``home``'s files: the folder itself, or an object home's staging folder."""
    return parse_home(str(home), setting).staging if is_remote(home) else Path(home)


def check_access(home: ObjectHome) -> None:
    """Write, read back and delete a probe object; :class:`ObjectHomeError` naming the setting
    when the store cannot be reached, the bucket does not exist or the credentials may not write."""
    probe = home.key(f".embed_assets_probe/{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with home.fs.open(probe, "wb") as f:
            f.write(b"ok")
        home.fs.rm(probe)
    except Exception as e:  # every client raises its own errors: OSError, PermissionError, botocore's
        raise home.error(
            "cannot write to the object store (is it reachable, does the bucket exist, "
            "may these credentials write?)",
            e,
        ) from None


def remote_of(path: str | Path) -> str | None:
    """The object URI of a file under a staging folder on this host, or None."""
    path = Path(path)
    for folder in path.parents:
        marker = folder / MARKER
        if marker.is_file():
            return f"{marker.read_text().strip()}/{path.relative_to(folder).as_posix()}"
    return None


def open_uri(uri: str):
    """``uri`` (``s3://bucket/key``) opened for reading through its filesystem."""
    scheme, _, path = uri.partition("://")
    return filesystem(scheme).open(path, "rb")


# --- sync between the staging folder and the home ---------------------------------------------


def _local_state(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


class _Manifest:
    """``{relative path: {"local": [size, mtime_ns], "remote": version}}`` at each file's last
    sync, read and written under a lock (a run's step processes share one staging folder)."""

    def __init__(self, home: ObjectHome):
        self.path = _manifest_path(home)
        self.entries: dict = {}
        self.lock = FileLock(str(home.staging / (MANIFEST + ".lock")))

    def __enter__(self) -> dict:
        self.lock.acquire()
        try:
            self.entries = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.entries = {}
        return self.entries

    def __exit__(self, *exc) -> None:
        self.lock.release()


def _version(info: dict) -> str:
    """What tells two versions of an object apart: its size and modification time."""
    return f"{info['size']}:{info.get('mtime')}"


def _remote_files(home: ObjectHome, rel: str) -> dict[str, str]:
    """``{relative path: version}`` of the objects at or under ``rel``."""
    key = home.key(rel)
    try:
        info = home.fs.info(key)
    except FileNotFoundError:
        return {}
    if info["type"] == "file":
        return {rel: _version(info)}
    root = home.key() + "/"
    found = home.fs.find(key, detail=True)
    return {name[len(root) :]: _version(d) for name, d in found.items() if d["type"] == "file"}


def pull(home: ObjectHome, rel: str = "") -> None:
    """Copy the objects at or under ``rel`` into the staging folder where the local copy is missing,
    or unchanged since its last sync while the object changed."""
    remote = _remote_files(home, rel)
    if not remote:
        return
    with _Manifest(home) as entries:
        changed = False
        for name, version in remote.items():
            local = home.staging / name
            entry = entries.get(name)
            if local.exists() and (entry is None or entry["remote"] == version):
                continue  # ours (written here), or already this version
            if local.exists() and _local_state(local) != entry["local"]:
                continue  # changed on both sides: the local one is pushed next, never overwritten
            local.parent.mkdir(parents=True, exist_ok=True)
            tmp = local.with_name(local.name + ".pull.tmp")
            home.fs.get_file(home.key(name), str(tmp))
            tmp.replace(local)
            entries[name] = {"local": _local_state(local), "remote": version}
            changed = True
        if changed:
            _save(home, entries)


def _manifest_path(home: ObjectHome) -> Path:
    return home.staging / MANIFEST


def _save(home: ObjectHome, entries: dict) -> None:
    path = _manifest_path(home)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, sort_keys=True))
    tmp.replace(path)


def push(home: ObjectHome) -> list[str]:
    """Upload every staging file changed since its last sync, each ``latest.json`` after the files
    (so a pointer never names an object that is not there yet), and delete the objects whose
    synced staging file was deleted (a selection checkpoint, ``gc``); the paths changed."""
    root = home.staging
    with _Manifest(home) as entries:
        files = [
            rel
            for p in root.rglob("*")
            if p.is_file() and not _LOCAL_ONLY.search(rel := p.relative_to(root).as_posix())
        ]
        todo = [rel for rel in files if entries.get(rel, {}).get("local") != _local_state(root / rel)]
        todo.sort(key=lambda rel: (rel.endswith("/" + LATEST) or rel == "last_run.json", rel))
        gone = sorted(set(entries) - set(files))  # synced once, deleted here since (a mirror)
        for rel in todo:
            state = _local_state(root / rel)
            try:
                home.fs.put_file(str(root / rel), home.key(rel))
            except Exception as e:
                _save(home, entries)  # what was uploaded stays recorded
                raise home.error(f"cannot upload {rel}", e) from None
            entries[rel] = {"local": state, "remote": _version(home.fs.info(home.key(rel)))}
        for rel in gone:
            with contextlib.suppress(FileNotFoundError):
                home.fs.rm_file(home.key(rel))
            del entries[rel]
        if todo or gone:
            _save(home, entries)
    return todo + gone


def forget(home: ObjectHome, rels: list[str]) -> None:
    """Drop ``rels`` (files, or folders with everything under them) from the manifest (after ``gc``)."""
    with _Manifest(home) as entries:
        for name in [n for n in entries if any(n == r or n.startswith(r + "/") for r in rels)]:
            del entries[name]
        _save(home, entries)


def pull_paths_in(home: ObjectHome, value) -> None:
    """Pull every staging path a value (JSON: dicts, lists, strings) names: the model folder, the
    BEIR folder, the index a downstream step opens, on a worker that has not seen them yet."""
    prefix = str(home.staging) + "/"
    if isinstance(value, dict):
        for v in value.values():
            pull_paths_in(home, v)
    elif isinstance(value, list):
        for v in value:
            pull_paths_in(home, v)
    elif isinstance(value, str) and value.startswith(prefix):
        pull(home, value[len(prefix) :].rstrip("/"))
