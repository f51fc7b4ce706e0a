"""Safe model files: skops serialization with a sha256 manifest, and loading that refuses unknown types.

A model file is `<name>.skops` beside its manifest `<name>.json` (the caller's manifest plus the file's sha256,
the skops version and the versions of the packages that made it). Loading re-hashes the bytes, checks every
type the file would instantiate against an explicit allow-list, and only then deserializes the same bytes.
pickle/joblib are never used to load: a model file must not be able to run code. The same model gives the same
bytes (`_canonical`), so a retrained model's sha256, and everything keyed on it, changes only when the model does.

The allow-list is exactly TRUSTED_TYPES (plus what a caller passes): skops's own check trusts every
scikit-learn estimator and many builtins by default, and `skops.io.load(..., trusted=...)` only adds to those
defaults, so the types are read from the file's schema here and compared with the list before skops sees it.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import crystal_dask
from crystal_dask.store.files import write_atomic

# Derived, not guessed: fit imblearn.ensemble.BalancedRandomForestClassifier(random_state=42) with default
# parameters on uint8 or float32 X (90 x 64) and int8..int64 y (9 classes), then every type named in the skops
# file's schema (model_types; skops 0.16, scikit-learn 1.9.1, imbalanced-learn 0.14.2): the same 13 types for
# every one of those dtypes. tests/store/test_models.py re-derives it.
TRUSTED_TYPES: tuple[str, ...] = (
    "builtins.dict",
    "builtins.list",
    "builtins.str",
    "builtins.tuple",
    "collections.OrderedDict",
    "imblearn.ensemble._forest.BalancedRandomForestClassifier",
    "imblearn.pipeline.Pipeline",
    "imblearn.under_sampling._prototype_selection._random_under_sampler.RandomUnderSampler",
    "numpy.float64",
    "numpy.int64",
    "numpy.ndarray",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.tree._tree.Tree",
)

# Packages whose versions decide whether a model file can be read back and what it computes.
PACKAGES: tuple[str, ...] = ("numpy", "scikit-learn", "imbalanced-learn", "skops", "dask", "distributed")
_RESERVED = ("sha256", "skops_version", "packages")


class UntrustedModelError(ValueError):
    """A model file would instantiate types outside the allow-list."""


_MAGIC = (
    (b"\x1f\x8b", "a gzip file (a compressed joblib pickle?)"),
    (b"\x78", "zlib-compressed data (a compressed joblib pickle?)"),
    (b"\x89HDF", "an HDF5 file"),
    (b"\x93NUMPY", "a numpy .npy array"),
    (b"PK", "a zip archive that is not a skops file"),
    (b"{", "a JSON text"),
)


def _looks_like(data: bytes) -> str:
    """What a file that is not a skops zip probably is, from its first bytes (for the error message)."""
    if not data:
        return "an empty file"
    if data[0] == 0x80 and len(data) > 1 and 2 <= data[1] <= 5:
        return (f"a Python pickle (protocol {data[1]}), as pickle and joblib write; "
                "pickles can run code when loaded and are never loaded")
    return next((what for magic, what in _MAGIC if data.startswith(magic)),
                f"unknown content starting with {data[:8]!r}")


def model_types(data: bytes) -> set[str]:
    """Every type ("module.Class", functions too) named in a skops file's schema: what loading would create.

    Raises ValueError when the bytes are not a skops file (no zip, no readable schema.json).
    """
    types: set[str] = set()

    def note(node: dict) -> dict:  # called by the parser for every JSON object of the schema, nested or not
        if "__class__" in node or "__module__" in node:
            types.add(f"{node.get('__module__')}.{node.get('__class__')}")
        return node

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            json.loads(z.read("schema.json"), object_hook=note)
    except (zipfile.BadZipFile, KeyError, OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = _looks_like(data) if not zipfile.is_zipfile(io.BytesIO(data)) else f"a zip without a valid schema: {exc}"
        raise ValueError(f"not a skops model file: {what}") from exc
    return types


_EPOCH = (1980, 1, 1, 0, 0, 0)  # the zip format's first date: no entry carries the time it was written
# skops nodes whose identity means something (one object referenced twice loads as one object); every other node
# (a str, number, None, tuple or type) is a value, and whether two equal values were one Python object depends on
# how the model travelled (pickled per tree from a worker process, or passed in memory)
_SHARED_NODES = frozenset({"ObjectNode", "TreeNode", "NdArrayNode", "ListNode", "DictNode"})


def _canonical(data: bytes) -> bytes:
    """A skops file written so that the same model gives the same bytes. skops 0.16 numbers every node ("__id__")
    and names every array file after an object's id(), a memory address, and stamps entries with the time; here,
    walking the schema in order, a node that can be shared gets the next number the first time its object appears
    (shared references stay shared), every value node a number of its own, each file its node's number, and the
    entries a fixed order and time. skops reads it as any file it wrote. ValueError for an entry no node names."""
    src = zipfile.ZipFile(io.BytesIO(data))
    schema = json.loads(src.read("schema.json"))
    numbers: dict[int, int] = {}  # skops's id -> ours
    files: dict[str, str] = {}
    count = 0

    def walk(node: Any) -> None:
        nonlocal count
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        if "__loader__" in node and "__id__" in node:
            old = node["__id__"]
            if node["__loader__"] not in _SHARED_NODES or old not in numbers:
                count += 1  # from 1: skops memoises no id 0
                numbers[old] = count
            node["__id__"] = numbers[old]
            if isinstance(node.get("file"), str):
                name = node["file"]
                files.setdefault(name, f"{node['__id__']}{Path(name).suffix}")
                node["file"] = files[name]
        for value in node.values():
            walk(value)

    walk(schema)
    unnamed = sorted(set(src.namelist()) - {"schema.json", *files})
    if unnamed:
        raise ValueError(f"skops wrote entries no schema node names: {unnamed[:3]}")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as dst:
        entries = [("schema.json", json.dumps(schema, indent=2).encode())]
        entries += [(new, _zero_padding(src.read(old)) if new.endswith(".npy") else src.read(old))
                    for old, new in sorted(files.items(), key=lambda f: int(Path(f[1]).stem))]
        for name, payload in entries:
            dst.writestr(zipfile.ZipInfo(name, _EPOCH), payload, compress_type=zipfile.ZIP_DEFLATED)
    return out.getvalue()


def _zero_padding(npy: bytes) -> bytes:
    """An .npy file whose structured array has padding between or after its fields (a tree's nodes: 7 bytes after
    `missing_go_to_left`) with zeros there, where the array held whatever its memory held; others as they are.
    The header is kept: numpy's own writer copies the padding through."""
    import numpy as np

    fmt = np.lib.format
    f = io.BytesIO(npy)
    read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
    if read_header is None:  # 3.0: utf-8 field names, which skops's trees do not have
        return npy
    shape, fortran, dtype = read_header(f)
    names = dtype.names
    if not names or sum(dtype.fields[n][0].itemsize for n in names) == dtype.itemsize:
        return npy
    arr = np.frombuffer(npy, dtype, offset=f.tell()).reshape(shape, order="F" if fortran else "C")
    clean = np.zeros(shape, dtype, order="F" if fortran else "C")
    for n in names:
        clean[n] = arr[n]
    return npy[: f.tell()] + clean.tobytes(order="A")


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
    import skops.io as sio  # here: skops imports scikit-learn (~1 s), which reading a manifest does not need

    try:
        data = _canonical(sio.dumps(model))  # deflated there: forests shrink ~10x
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
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


def model_arrays(manifest: dict[str, Any]) -> tuple[str, ...]:
    """The dataset arrays a model was fitted on, side by side, from its manifest (one written before feature sets
    names none: raw pixels)."""
    from crystal_dask.store.dataset import PIXELS  # here: reading a manifest needs no zarr or dask

    return tuple((manifest.get("config") or {}).get("features") or (PIXELS,))


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


def checked_bytes(path: Path, trusted: Sequence[str] | None = None, sha256: str | None = None
                  ) -> tuple[bytes, list[str]]:
    """A model file's bytes, once their sha256 matches the manifest's (and `sha256` when given: the model a run was
    planned with, so a file retrained meanwhile is refused) and every type they name is on the allow-list
    (TRUSTED_TYPES + `trusted`), and that list: what `load_model` deserializes. Raises as `load_model` does."""
    path = Path(path)
    expected = read_manifest(path)["sha256"]
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise ValueError(f"{path}: sha256 {actual} differs from the manifest's {expected}; file changed or corrupt")
    if sha256 is not None and actual != sha256:
        raise ValueError(f"{path}: sha256 {actual} is not the {sha256} this run started with; the model was "
                         "replaced during the run")
    allowed = sorted({*TRUSTED_TYPES, *(trusted or ())})
    try:
        found = model_types(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    refused = sorted(found - set(allowed))
    if refused:
        raise UntrustedModelError(
            f"{path}: refusing to load type(s) outside the trusted list {refused}; pass them in `trusted` only if "
            "you trust the file's author"
        )
    return data, allowed


def load_model(path: Path, trusted: Sequence[str] | None = None, sha256: str | None = None) -> Any:
    """Load a model written by save_model, after checking its hash (against `sha256` too, when given) and the
    types it contains (`checked_bytes`).

    Raises ValueError naming the file when the manifest is missing or the sha256 differs, and
    UntrustedModelError naming the types when the file holds any type outside TRUSTED_TYPES + `trusted`.
    The bytes that were hashed and checked are the bytes deserialized (no second read of the file).
    """
    import skops.io as sio
    from skops.io.exceptions import UntrustedTypesFoundException

    data, allowed = checked_bytes(path, trusted, sha256)
    try:
        # skops audits every type against `allowed` again while loading, in case a future schema hides a type
        # from our walk (a separate get_untrusted_types pass cost a third of the load: 1-2 s per forest)
        return sio.loads(data, trusted=allowed)
    except UntrustedTypesFoundException as exc:
        raise UntrustedModelError(f"{path}: refusing to load type(s) outside the trusted list: {exc}") from exc
    except Exception as exc:  # every type is trusted by now: what is left is a damaged file
        raise ValueError(f"{path}: cannot load the model: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
