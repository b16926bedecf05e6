"""Which models this neuron may serve: configured ids, a scanned models directory, and the embedded model.

Only listed models are ever loaded; a request names an id, never a path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from serving.settings import EMBEDDED_ID, Settings

log = logging.getLogger("serving.catalogue")


@dataclass(frozen=True)
class ModelSource:
    id: str
    path: Path | None  # None: the embedded checkpoint, materialised on first use
    embedded: bool = False


def is_checkpoint(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def scan(settings: Settings) -> dict[str, ModelSource]:
    """Configured models first, then checkpoints found directly under ``models_dir`` (id = directory name)."""
    out: dict[str, ModelSource] = {}
    if settings.serves_embedded:
        out[EMBEDDED_ID] = ModelSource(EMBEDDED_ID, None, embedded=True)
    if settings.models_dir is not None and settings.models_dir.is_dir():
        for child in sorted(settings.models_dir.iterdir()):
            if is_checkpoint(child):
                out[child.name] = ModelSource(child.name, child)
    for mid, path in settings.models.items():
        out[mid] = ModelSource(mid, path)
    return out
