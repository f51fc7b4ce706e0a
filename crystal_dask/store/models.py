"""Safe model files: skops serialization with a sha256 manifest, and loading that refuses unknown types.

A model file is `<name>.skops` beside its manifest `<name>.json` (the caller's manifest plus the file's sha256,
the skops version and the versions of the packages that made it). Loading re-hashes the bytes, checks every
type the file would instantiate against an explicit allow-list, and only then deserializes the same bytes.
pickle/joblib are never used to load: a model file must not be able to run code.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import skops.io as sio

import crystal_dask
from crystal_dask.store.files import write_atomic

# Derived, not guessed: fit imblearn.ensemble.BalancedRandomForestClassifier(random_state=42) with default
# parameters on uint8 X (90 x 64) and int y (9 classes), then skops.io.get_untrusted_types(data=dumps(model))
# (skops 0.16, scikit-learn 1.9.1, imbalanced-learn 0.14.2). tests/test_models.py re-derives it.
TRUSTED_TYPES: tuple[str, ...] = (
    "imblearn.ensemble._forest.BalancedRandomForestClassifier",
    "imblearn.pipeline.Pipeline",
    "imblearn.under_sampling._prototype_selection._random_under_sampler.RandomUnderSampler",
    "sklearn.tree._tree.Tree",
)

# Packages whose versions decide whether a model file can be read back and what it computes.
PACKAGES: tuple[str, ...] = ("numpy", "scikit-learn", "imbalanced-learn", "skops", "dask", "distributed")
_RESERVED = ("sha256", "skops_version", "packages")


class UntrustedModelError(ValueError):
    """A model file would instantiate types outside the allow-list."""


def manifest_path(path: Path) -> Path:
    """The manifest that belongs to a model file: same name, .json suffix."""
    return Path(path).with_suffix(".json")


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["crystal_dask"] = crystal_dask.__version__  # may run from a source tree, not an installed dist
    return out


def save_model(model: Any, path: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write `model` with skops to `path` and its manifest beside it; return the manifest written.

    The manifest is `manifest` plus sha256 (of the model file), skops_version and packages; those three keys
    are reserved. Both files are written atomically, model first, so a manifest never describes a missing file.
    """
    path = Path(path)
    clash = [k for k in _RESERVED if k in manifest]
    if clash:
        raise ValueError(f"manifest for {path}: key(s) {clash} are reserved (filled in by save_model)")
    data = sio.dumps(model, compression=zipfile.ZIP_DEFLATED)  # forests shrink ~10x
    versions = _versions()
    full = {**manifest, "sha256": hashlib.sha256(data).hexdigest(), "skops_version": versions["skops"],
            "packages": versions}
    try:
        text = json.dumps(full, indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"manifest for {path} is not JSON-able: {exc}") from exc
    write_atomic(path, data)
    write_atomic(manifest_path(path), text.encode())
    return full


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a model file; ValueError naming the file when it is missing or unreadable."""
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise ValueError(f"{path}: manifest {mpath} is missing; refusing to load an unverified model")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{mpath}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), str):
        raise ValueError(f"{mpath}: manifest has no sha256")
    return manifest


def load_model(path: Path, trusted: Sequence[str] | None = None) -> Any:
    """Load a model written by save_model, after checking its hash and the types it contains.

    Raises ValueError naming the file when the manifest is missing or the sha256 differs, and
    UntrustedModelError naming the types when the file holds any type outside TRUSTED_TYPES + `trusted`.
    The bytes that were hashed and checked are the bytes deserialized (no second read of the file).
    """
    path = Path(path)
    expected = read_manifest(path)["sha256"]
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} differs from the manifest's {expected}; file changed or corrupt")
    allowed = sorted({*TRUSTED_TYPES, *(trusted or ())})
    refused = sorted(set(sio.get_untrusted_types(data=data)) - set(allowed))
    if refused:
        raise UntrustedModelError(
            f"{path}: refusing to load untrusted type(s) {refused}; pass them in `trusted` only if you trust "
            "the file's author"
        )
    return sio.loads(data, trusted=allowed)
