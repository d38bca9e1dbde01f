"""The input boundary: every file a user hands gridmarkets is read through here.

Case and study files, profile CSVs and network JSON files are read with a size limit
(:data:`MAX_FILE_BYTES`) and as UTF-8, with an error naming the file and the line of
the first byte that is not (a UTF-16 file is named as such). YAML is read with
:class:`StrictLoader`: PyYAML's safe loader (no Python objects) that refuses a key
given twice in one mapping (naming the key and both lines), a date that does not
exist (``2016-13-45``) and aliases that would add more than :data:`MAX_YAML_NODES`
values when expanded (the "billion laughs"), before anything is built from them.

Also here: :func:`output_folder` (an ``--out`` checked before a model is built),
:func:`check_name` (a case's or study's name is not a path), :func:`solve_options`
(the command line's solver options finite), :func:`memory_available_bytes` (for the
model-size guard) and :func:`plain` (numbers in messages without numpy's repr).
"""

from __future__ import annotations

import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

from gridmarkets.errors import InputError

MAX_FILE_BYTES = 200 * 1024**2
"""Largest file read (bytes): a year of 15-minute profiles or a SimBench net is far below."""

MAX_YAML_BYTES = 50 * 1024**2
"""Largest case or study file (bytes): a year of 15-minute values for 100 participants."""

MAX_YAML_NODES = 1_000_000
"""Most values aliases may add to a YAML document when expanded."""

__all__ = [
    "MAX_FILE_BYTES",
    "MAX_YAML_BYTES",
    "MAX_YAML_NODES",
    "StrictLoader",
    "check_name",
    "decode",
    "load_yaml",
    "memory_available_bytes",
    "output_folder",
    "plain",
    "read_text",
    "read_yaml_file",
    "solve_options",
]


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file's contents, or an InputError naming the file and the problem.

    Parameters
    ----------
    path : the file.
    what : how messages name it ("case file", "network file", ...).
    max_bytes : the largest size accepted.
    """
    path = Path(path)
    source = f"{what} {path}".strip()
    if not path.is_file():
        raise InputError(f"{source}: no such file")
    size = path.stat().st_size
    if size > max_bytes:
        raise InputError(f"{source}: {size:,} bytes is more than the {max_bytes:,} read")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{source}: cannot be read ({err.strerror})") from None
    return decode(raw, source)


def decode(raw: bytes, source: str) -> str:
    """UTF-8 bytes as text; an InputError naming the line of the first bad byte."""
    if raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise InputError(f"{source}: is UTF-16 encoded; save it as UTF-8")
    if b"\x00" in raw:
        line = raw[: raw.index(b"\x00")].count(b"\n") + 1
        raise InputError(
            f"{source}: line {line}: a NUL byte (UTF-16 without a byte order mark, or not "
            "a text file); save it as UTF-8"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        byte = raw[err.start : err.start + 1].hex()
        raise InputError(
            f"{source}: line {line}: byte 0x{byte} is not UTF-8; save the file as UTF-8"
        ) from None


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where installed


class StrictLoader(SAFE_LOADER):
    """PyYAML's safe loader (libyaml's where installed) that refuses duplicate keys,
    impossible dates and alias bombs."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            refuse_alias_bombs(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            refuse_duplicate_keys(self, node)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_timestamp(self, node):
        try:
            return super().construct_yaml_timestamp(node)
        except (ValueError, OverflowError) as err:
            raise ConstructorError(
                None, None, f"{node.value!r} is not a date and time ({err})", node.start_mark
            ) from None


StrictLoader.add_constructor("tag:yaml.org,2002:timestamp", StrictLoader.construct_yaml_timestamp)
StrictLoader.add_constructor("tag:yaml.org,2002:map", StrictLoader.construct_yaml_map)


def refuse_duplicate_keys(loader: Any, node: yaml.MappingNode) -> None:
    """A key given twice in one mapping is an error naming it and the first one's line
    (merge keys ``<<`` may be overridden, as YAML intends)."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first given on line {seen[key] + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        except TypeError:
            continue  # an unhashable key: SafeLoader's own error names it


def refuse_alias_bombs(node: yaml.Node) -> None:
    """An error when aliases add more than :data:`MAX_YAML_NODES` values to a document
    (the file's own values are bounded by its size), or when an alias sits inside the
    node it names."""
    sizes: dict[int, int] = {}
    added = expanded_size(node, sizes, set()) - len(sizes)
    if added > MAX_YAML_NODES:
        raise yaml.YAMLError(
            f"its aliases expand it by {added:,} values, more than the {MAX_YAML_NODES:,} allowed"
        )


def expanded_size(node: yaml.Node, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values ``node`` holds with every alias expanded (keys count as values).

    Shared nodes are counted once each (``sizes`` memoises them: it ends with one entry
    per distinct node), so the count takes time linear in the file and no memory for
    the expansion itself.
    """
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_:
        raise yaml.YAMLError(
            f"an alias refers to a node that contains it (line {node.start_mark.line + 1})"
        )
    open_.add(key)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(expanded_size(child, sizes, open_) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += expanded_size(k, sizes, open_) + expanded_size(v, sizes, open_)
    open_.discard(key)
    sizes[key] = size
    return size


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text with :class:`StrictLoader`; errors name ``source`` and the line."""
    try:
        return yaml.load(text, Loader=StrictLoader)
    except yaml.YAMLError as err:
        raise InputError(f"{source}: not valid YAML: {_yaml_message(err)}") from None
    except RecursionError:
        raise InputError(f"{source}: not valid YAML: nested too deeply") from None


def _yaml_message(err: yaml.YAMLError) -> str:
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    return str(err)


def read_yaml_file(path: str | Path) -> Any:
    """Read and parse a case or study file (size limit, UTF-8, :class:`StrictLoader`)."""
    return load_yaml(read_text(path, "", MAX_YAML_BYTES), str(path))


def output_folder(path: str | Path, what: str = "--out") -> Path:
    """A folder results may be written to, created if missing; an InputError for an
    existing file, a device, or a place that cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        mode = path.stat().st_mode
        kind = "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a file"
        raise InputError(f"{what} {path}: is {kind}, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise InputError(f"{what} {path}: cannot write there ({err.strerror})") from None
    return path


def solve_options(**options: float | int | None) -> dict[str, float | int]:
    """The command line's solver options that were given (``--time-limit``, ...), each
    a finite number: positive, a gap at least 0."""
    given = {key: value for key, value in options.items() if value is not None}
    for key, value in given.items():
        low_ok = value >= 0 if key == "mip_gap" else value > 0
        if not math.isfinite(value) or not low_ok:
            flag = "--" + key.replace("_", "-")
            need = "at least 0" if key == "mip_gap" else "above 0"
            raise InputError(f"{flag}: {plain(value)} is not a finite number {need}")
    return given


def memory_available_bytes() -> int:
    """The memory this process may still take (bytes): the least of the machine's
    available memory, the cgroup's remaining limit and the address-space limit
    (``ulimit -v``) less what the process already maps."""
    bounds = [
        _meminfo("MemAvailable") or os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    ]
    cgroup = Path("/sys/fs/cgroup")
    limit = _read_number(cgroup / "memory.max")
    if limit is not None:
        bounds.append(limit - (_read_number(cgroup / "memory.current") or 0))
    soft = _address_space_limit()
    if soft is not None:
        bounds.append(soft - (_status_kib("VmSize") or 0) * 1024)
    return max(0, min(bounds))


def _address_space_limit() -> int | None:
    """``ulimit -v`` in bytes; None without one (or without :mod:`resource`, Windows)."""
    try:
        import resource
    except ImportError:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _read_number(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def check_name(name: str) -> str:
    """A case or study name, which names the default output folder: not a path."""
    if name in ("", ".", "..") or any(c in name for c in ("/", "\\", os.sep, "\x00")):
        raise ValueError(f"{name!r} is a path, not a name; choose the output folder with --out")
    return name


def plain(value: Any) -> str:
    """A number as people write it (``-1.0``, ``inf``), never ``np.float64(-1.0)``."""
    if isinstance(value, bool | str) or not hasattr(value, "__float__"):
        return str(value)
    if isinstance(value, int) or getattr(getattr(value, "dtype", None), "kind", "") in ("i", "u"):
        return str(int(value))
    return repr(float(value))
