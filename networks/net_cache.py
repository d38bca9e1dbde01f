"""A disk cache of the pandapower nets :func:`~gridmarkets.networks.load` reads from
SimBench and pandapower's built-ins, so a run after the first skips SimBench's CSV parse.

An entry is keyed by the source, the name and the versions of simbench, pandapower and
gridmarkets (:func:`entry_key`); it holds the net as pandapower JSON (read back through
the allow-listed :func:`~gridmarkets.networks.feeder.read_net_json`, never unpickled), its
SimBench profiles as a NumPy ``.npz`` without object arrays, and a manifest naming the key,
written last: an entry without a matching manifest does not exist. Files are written to a
temporary name and renamed; a file lock per entry lets concurrent workers load at once
(one parses, the others wait and read). A corrupt or foreign entry is logged and rebuilt.

The folder is :data:`CACHE_ENV` if set (``off`` disables the cache), else the user's
cache folder (``platformdirs``, e.g. ``~/.cache/gridmarkets/networks`` on Linux).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pandas as pd

from gridmarkets.errors import NetworkError

CACHE_ENV = "GRIDMARKETS_CACHE_DIR"
"""Environment variable: the cache folder, or ``off`` to read every net afresh."""

FORMAT = 3
"""The entry layout's version (part of the key)."""

VERSIONED = ("simbench", "pandapower", "gridmarkets")

log = logging.getLogger(__name__)


def cache_dir() -> Path | None:
    """The folder of cached nets, or None when :data:`CACHE_ENV` is ``off``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured.lower() == "off":
        return None
    if configured:
        return Path(configured).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("gridmarkets")) / "networks"


def entry_key(source: str, name: str) -> dict[str, object]:
    """What an entry is keyed by: source, name, entry format and library versions."""
    versions = {}
    for package in VERSIONED:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "unknown"
    return {"source": source, "name": name, "format": FORMAT, "versions": versions}


def cached_net(source: str, name: str, read: Callable[[], object]):
    """The net ``read()`` returns, from the cache when an entry for (source, name) exists.

    Parameters
    ----------
    source : "simbench" or "pandapower".
    name : the SimBench code or the pandapower function name.
    read : builds the net afresh (on a miss); its net is then stored.
    """
    folder = cache_dir()
    if folder is None:
        return read()
    key = entry_key(source, name)
    stem = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    paths = {part: folder / f"{stem}.{part}" for part in ("manifest.json", "net.json", "npz")}
    from filelock import FileLock

    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(folder / f"{stem}.lock"):
        net = _read_entry(paths, key)
        if net is None:
            net = read()
            _write_entry(paths, key, net)
    return net


def _read_entry(paths: dict[str, Path], key: dict):
    """The stored net, or None on a miss (no entry) or a bad entry (logged)."""
    manifest = paths["manifest.json"]
    if not manifest.is_file():
        return None
    from gridmarkets.networks.feeder import read_net_json

    try:
        stored = json.loads(manifest.read_text(encoding="utf-8"))
        if stored != key:
            raise NetworkError(f"it is keyed {stored}, not {key}")
        net = read_net_json(paths["net.json"])
        profiles = _read_profiles(paths["npz"])
        if profiles:  # SimBench nets only
            net["profiles"] = profiles
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, NetworkError) as err:
        log.warning("network cache: entry %s is unusable (%s); rebuilding it", manifest, err)
        return None
    log.debug("network cache: %s %s read from %s", key["source"], key["name"], manifest)
    return net


def _write_entry(paths: dict[str, Path], key: dict, net) -> None:
    """Store the net: tables as pandapower JSON, profiles as .npz, the manifest last.

    Empty tables exactly as an empty net has them are left out (pandapower's reader
    creates them so), which halves the time to read the entry."""
    import pandapower as pp

    empty_net = pp.create_empty_network()

    def as_in_empty_net(key: str, value) -> bool:
        default = empty_net.get(key)
        return (
            isinstance(value, pd.DataFrame)
            and value.empty
            and isinstance(default, pd.DataFrame)
            and value.dtypes.equals(default.dtypes)
        )

    kept = {
        key: value
        for key, value in net.items()
        if key != "profiles" and not as_in_empty_net(key, value)
    }
    text = pp.to_json(pp.pandapowerNet(kept))
    _atomic_write(paths["npz"], lambda f: _write_profiles(f, net.get("profiles") or {}))
    _atomic_write(paths["net.json"], lambda f: f.write(text.encode("utf-8")))
    _atomic_write(paths["manifest.json"], lambda f: f.write(json.dumps(key).encode("utf-8")))


def _atomic_write(path: Path, write: Callable) -> None:
    """Write to a temporary file in the same folder, then rename it over ``path``."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as f:
            write(f)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_profiles(f, profiles: dict[str, pd.DataFrame]) -> None:
    """Each profile table as its column names and one array per column (numbers as
    float64, anything else as text): no object arrays, so no pickle."""
    arrays = {}
    for table, frame in profiles.items():
        arrays[f"{table}/columns"] = np.array(frame.columns, dtype=str)
        for k, column in enumerate(frame.columns):
            values = frame[column].to_numpy()
            numeric = pd.api.types.is_numeric_dtype(values.dtype)
            arrays[f"{table}/{k}"] = values if numeric else values.astype(str)
    np.savez(f, **arrays)


def _read_profiles(path: Path) -> dict[str, pd.DataFrame]:
    """The profile tables :func:`_write_profiles` stored (text columns as str objects)."""
    profiles = {}
    with np.load(path, allow_pickle=False) as stored:
        tables = [name.removesuffix("/columns") for name in stored if name.endswith("/columns")]
        for table in tables:
            columns = stored[f"{table}/columns"].tolist()
            data = {}
            for k, column in enumerate(columns):
                values = stored[f"{table}/{k}"]
                data[column] = values.astype(object) if values.dtype.kind == "U" else values
            profiles[table] = pd.DataFrame(data, columns=columns)
    return profiles
