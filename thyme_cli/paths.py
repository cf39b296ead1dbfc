"""Where thyme keeps its own files: config, run directories.

Everything lives under platformdirs' per-user locations unless THYME_HOME is set, in which case
everything lives under that one folder (tests point it at a temporary directory). Model weights
are NOT kept here: they go to the standard Hugging Face cache (HF_HOME), shared with other tools.
"""

from __future__ import annotations

import os
from pathlib import Path


def thyme_home() -> Path | None:
    """The THYME_HOME override, if set."""
    value = os.environ.get("THYME_HOME")
    return Path(value).expanduser() if value else None


def config_dir() -> Path:
    home = thyme_home()
    if home is not None:
        return home
    import platformdirs

    return Path(platformdirs.user_config_dir("thyme", appauthor=False))


def data_dir() -> Path:
    home = thyme_home()
    if home is not None:
        return home
    import platformdirs

    return Path(platformdirs.user_data_dir("thyme", appauthor=False))


def config_file() -> Path:
    """The user's config file (user model entries and defaults)."""
    return config_dir() / "config.toml"


def runs_dir() -> Path:
    """Where each question's run directory goes by default."""
    return data_dir() / "runs"


def local_models_dir() -> Path:
    """Where converted models (e.g. thyme-7b GGUF) are stored."""
    return data_dir() / "models"
