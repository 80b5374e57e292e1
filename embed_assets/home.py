"""Where the artifact home is when nobody says: ``$EMBED_ASSETS_HOME``, or ``.embed_assets`` in
the working directory. The CLI, the store resource, the IO manager and the sensor's cache all
start from this one default."""

from __future__ import annotations

import os

HOME_ENV = "EMBED_ASSETS_HOME"
# How errors about the home name it: the environment variable, or the store resource's field.
HOME_SETTING = f"{HOME_ENV} (resources.store.config.root_dir)"


def default_home() -> str:
    """The artifact home's folder, read from the environment now."""
    return os.environ.get(HOME_ENV, ".embed_assets")
