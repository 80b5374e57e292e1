"""Bulk encoding spread over Ray workers: the corpus embeddings of the chunk index and the evaluation.

Off by default: the stages encode in their own process, and Ray is never imported. Setting
``$EMBED_ASSETS_RAY_ADDRESS`` makes :func:`~embed_assets.export.onnx_encoder.corpus_encoder`, which
every stage that embeds texts in bulk goes through, hand its onnxruntime model batches to a pool of
Ray actors (``ray.util.ActorPool``). Each actor loads the model's ONNX export from its folder once
and runs whole batches; this process tokenises, cuts the batches exactly as the in-process encoder
does (:func:`~embed_assets.serving.runtime.length_batches`) and puts the vectors back in order, so
the vectors are the in-process ones bit for bit (a batch is padded alike wherever it runs).

The address is Ray's own (``ray.init(address=...)``):

- ``local``: start a Ray instance inside this process (one machine; for trying it out and the tests);
- ``auto``: the cluster that ``ray start`` started on this machine;
- ``host:port``: a cluster's head node (its GCS port, 6379 by default);
- ``ray://host:port``: a cluster through the Ray Client (port 10001 by default).

``$EMBED_ASSETS_RAY_WORKERS`` sets how many actors (one CPU each); default: the cluster's CPUs.
Every node needs this package installed and the artifact home mounted at the same path (the
actors read the ONNX export from it), as a Kubernetes step pod has.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from embed_assets.serving.runtime import (
    OnnxEmbedder,
    TextTokenizer,
    length_batches,
    read_descriptor,
    unit_rows,
)

RAY_ADDRESS_ENV = "EMBED_ASSETS_RAY_ADDRESS"
RAY_WORKERS_ENV = "EMBED_ASSETS_RAY_WORKERS"
INSTALL_HINT = "pip install 'embed_assets[ray]'"
_NAMED_ADDRESSES = {"local", "auto"}
_PROBE_TIMEOUT_S = 5.0


class RaySettingError(ValueError):
    """The Ray setting is malformed, or names a cluster that cannot be reached."""


@dataclass(frozen=True)
class RaySettings:
    """Where to fan out: a Ray address (see the module) and how many actors (None: one per CPU)."""

    address: str
    workers: int | None = None

    def describe(self) -> str:
        return f"ray at {self.address}, " + (
            f"{self.workers} workers" if self.workers else "a worker per CPU"
        )


def ray_settings(environ: Mapping[str, str] = os.environ) -> RaySettings | None:
    """The Ray setting from the environment; None (encode in process) when the address is unset.

    Raises:
        RaySettingError: a worker count that is not a positive integer.
    """
    address = environ.get(RAY_ADDRESS_ENV, "").strip()
    if not address:
        return None
    raw = environ.get(RAY_WORKERS_ENV, "").strip()
    if raw and not (raw.isdigit() and int(raw) > 0):
        raise RaySettingError(f"${RAY_WORKERS_ENV}={raw!r}: expected a positive number of Ray workers")
    return RaySettings(address, int(raw) if raw else None)


def connect(settings: RaySettings) -> None:
    """Connect this process to the Ray cluster of ``settings`` (``local`` starts one here).

    A process already connected keeps its connection. A ``host:port`` that does not answer fails
    within seconds (``ray.init`` itself would retry for minutes).

    Raises:
        RaySettingError: Ray is not installed, or the address cannot be reached; the message
            names ``$EMBED_ASSETS_RAY_ADDRESS``.
    """
    check(settings)
    import ray

    if ray.is_initialized():
        return
    local = {"include_dashboard": False} if settings.address == "local" else {}
    try:
        ray.init(address=settings.address, log_to_driver=False, **local)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError: Ray's own message follows
        raise RaySettingError(f"{_where(settings)}: cannot connect to Ray: {exc}") from exc


def check(settings: RaySettings) -> None:
    """What can be checked without connecting: Ray is installed, and a ``host:port`` answers.

    Raises:
        RaySettingError: naming ``$EMBED_ASSETS_RAY_ADDRESS``.
    """
    try:
        import ray  # noqa: F401
    except ImportError as exc:
        raise RaySettingError(f"{_where(settings)} needs Ray: {INSTALL_HINT}") from exc
    if settings.address not in _NAMED_ADDRESSES:
        _probe(settings.address, _where(settings))


def check_ray_setting() -> None:
    """Fail now on a Ray setting that cannot work (malformed, Ray missing, nothing at the address);
    a no-op when it is unset. Every step's setup calls it, so such a run does no work."""
    if (settings := ray_settings()) is not None:
        check(settings)


def _where(settings: RaySettings) -> str:
    return f"${RAY_ADDRESS_ENV}={settings.address!r}"


def _probe(address: str, where: str) -> None:
    """Fail fast unless something listens at ``address`` (``host:port`` or ``ray://host:port``)."""
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError as exc:  # a port that is not a number
        raise RaySettingError(f"{where}: expected local, auto, host:port or ray://host:port") from exc
    if not host or port is None:
        raise RaySettingError(f"{where}: expected local, auto, host:port or ray://host:port")
    try:
        socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise RaySettingError(f"{where}: no Ray cluster answers at {host}:{port} ({exc})") from exc


class _BatchEmbedder:
    """A Ray actor's state: the ONNX export, loaded once, that embeds whole batches of token ids."""

    def __init__(self, export_dir: str, threads: int) -> None:
        self.embedder = OnnxEmbedder(
            export_dir, providers=["CPUExecutionProvider"], intra_op_num_threads=threads
        )

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        return self.embedder.embed_ids(ids)


class RayTextEncoder:
    """A :data:`~embed_assets.models.TextEncoder` equal to ``onnx_text_encoder(export_dir,
    batch_size)`` whose model batches run on Ray actors; connects at once, starts the actors at
    the first call and keeps them while it lives.

    Args:
        export_dir: an ``export_onnx`` folder, read here (its tokenizer) and by every actor.
        batch_size: texts per model batch.
        settings: the cluster and the number of actors.
    """

    def __init__(self, export_dir: Path, batch_size: int, settings: RaySettings):
        connect(settings)
        descriptor = read_descriptor(export_dir)
        self.tokenizer = TextTokenizer(export_dir, int(descriptor["max_seq_length"]))
        self.dim = int(descriptor["embedding_dim"])
        self.export_dir, self.batch_size, self.settings = Path(export_dir), batch_size, settings
        self._pool = None

    def _actors(self):
        import ray
        from ray.util import ActorPool

        if self._pool is None:
            workers = self.settings.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            actor = ray.remote(num_cpus=1)(_BatchEmbedder)
            self._pool = ActorPool([actor.remote(str(self.export_dir), 1) for _ in range(workers)])
        return self._pool

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer.encode(list(texts), truncate="END")
        batches = length_batches(ids, self.batch_size)
        # ActorPool.map gives each batch to the next free actor and yields the results in order.
        rows = [[ids[i] for i in b] for b in batches]
        results = self._actors().map(lambda actor, batch: actor.embed.remote(batch), rows)
        for idx, vectors in zip(batches, results, strict=True):
            out[idx] = vectors
        return unit_rows(out)
