"""The shipped world model: where its folders are, and a check that its files are the ones the recipe made.

``model.path=world`` loads ``sd/`` (a diffusers pipeline folder), ``eval.clip_model=world`` the world CLIP,
``eval.dino_model=world`` the identity ViT. ``manifest.json`` lists every weight file's sha256; a file that is
missing or differs stops the run with one line naming it and how to get it back. The manifest's hash is
the model's content hash, recorded with every run (``sweeper.config.embedded_models`` makes it the model's identity).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from lora_core.errors import UserInputError

REBUILD = (
    "python -m lora_core.embedded.recipe build --out lora_core/embedded/weights/world "
    "(about 2 hours on 2 CPU cores)"
)
_VERIFIED: dict[tuple[str, float], str] = {}


def world_dir() -> Path:
    """Folder of the world model: ``LORA_SWEEPS_WORLD`` if set, else the copy shipped beside this module."""
    if env := os.environ.get("LORA_SWEEPS_WORLD"):
        return Path(env)
    return Path(__file__).resolve().parent / "weights" / "world"


def verified_world_dir() -> tuple[Path, str]:
    """The world model's folder after checking every file against ``manifest.json`` (once per process).

    Returns:
        (folder, content hash: the first 12 hex digits of the sha256 of the manifest's file list).

    Raises:
        UserInputError: The manifest or a weight file is missing, unreadable or not what the recipe made.
    """
    root = world_dir()
    manifest_path = root / "manifest.json"
    try:
        stamp = manifest_path.stat().st_mtime
        files = json.loads(manifest_path.read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        raise UserInputError(
            f"model.path=world: {manifest_path} is missing or unreadable ({err.__class__.__name__}). "
            f"Restore it with `git checkout -- {root}` or rebuild the model: {REBUILD}."
        ) from err
    key = (str(root), stamp)
    if key not in _VERIFIED:
        for rel, digest in files.items():
            path = root / rel
            try:
                actual = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError as err:
                raise UserInputError(
                    f"model.path=world: {path} is missing ({err.strerror}). Restore it with `git checkout -- "
                    f"{root}` or rebuild the model: {REBUILD}."
                ) from err
            if actual != digest:
                raise UserInputError(
                    f"model.path=world: {path} is corrupt (its sha256 is not the one in manifest.json). Restore "
                    f"it with `git checkout -- {root}` or rebuild the model: {REBUILD}."
                )
        listing = json.dumps(files, sort_keys=True).encode()
        _VERIFIED[key] = hashlib.sha256(listing).hexdigest()[:12]
    return root, _VERIFIED[key]


def world_part(part: str) -> str:
    """Folder of one verified part: ``sd``, ``clip`` or ``identity``."""
    root, _ = verified_world_dir()
    return str(root / part)


def world_hash() -> str:
    """The world model's content hash (recorded as the model's identity with every run)."""
    return verified_world_dir()[1]
