"""Where the sample datasets live.

The data root is a setting: the ``GANAUG_DATA_ROOT`` environment variable, or an explicit
argument. Without either, ``../shared/data`` next to the current directory or next to the
repository checkout is used when it exists.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "GANAUG_DATA_ROOT"


class DataRootError(FileNotFoundError):
    """The data root (or a dataset under it) could not be found."""


def _default_candidates() -> list[Path]:
    repo = Path(__file__).resolve().parent.parent
    return [Path.cwd().parent / "shared" / "data", repo.parent / "shared" / "data"]


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data root as an existing directory.

    Args:
        root: explicit path; overrides the environment variable and the default.

    Raises:
        DataRootError: the chosen root does not exist, with the setting to change.
    """
    if root is not None:
        path, origin = Path(root), "the data root you passed (--data-root / data_root=)"
    elif os.environ.get(ENV_VAR):
        path, origin = Path(os.environ[ENV_VAR]), f"${ENV_VAR}"
    else:
        for cand in _default_candidates():
            if cand.is_dir():
                return cand.resolve()
        raise DataRootError(
            f"No data root found: set {ENV_VAR} to the folder holding camvid/, coco128/ "
            f"and magnetic-tile/ (looked for the default at "
            f"{', '.join(str(c) for c in _default_candidates())})."
        )
    if not path.is_dir():
        raise DataRootError(
            f"Data root {path} (from {origin}) is not a directory: point it at the folder "
            f"holding camvid/, coco128/ and magnetic-tile/."
        )
    return path.resolve()


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    """Return ``<data root>/<name>``, raising :class:`DataRootError` if it is missing."""
    base = data_root(root)
    path = base / name
    if not path.is_dir():
        raise DataRootError(
            f"Dataset folder {path} does not exist: the data root {base} has no {name!r}; "
            f"set {ENV_VAR} to a root that contains it."
        )
    return path
