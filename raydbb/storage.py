"""Inputs and outputs as local paths or URIs (``s3://``, ``gs://``, ``file://``, ...).

Every function takes a *location*: a local path (``str`` or :class:`~pathlib.Path`) or a URI that
:meth:`pyarrow.fs.FileSystem.from_uri` understands, and optionally an explicit ``filesystem``
(then the location is a path inside it — how tests use :class:`pyarrow.fs.SubTreeFileSystem` or
an in-memory filesystem, and how a caller reuses one S3 client for many files).

Writes are atomic where the filesystem allows it: on local-like filesystems the bytes go to a
hidden temporary name in the same folder and are moved into place, so a reader never sees half a
file; on object stores (S3, GCS) an object only becomes visible when its upload completes, so
the write goes straight to the final key.

Credentials and regions come from pyarrow's usual sources (environment variables, instance
metadata, ``~/.aws``); nothing here reads or stores them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import posixpath
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from raydbb.errors import DataError

# A scheme is 2+ characters, so Windows drive letters (``C:\``) are not taken for URIs.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# Object stores publish an object atomically when its upload completes; no temp + move needed.
_OBJECT_STORES = {"s3", "gcs"}

@dataclass(frozen=True)
class Resolved:
    """A location resolved to ``(filesystem, path inside it)``; ``uri`` is what the user gave."""

    filesystem: pafs.FileSystem
    path: str
    uri: str


def is_uri(location: str | Path) -> bool:
    """True for ``scheme://...`` strings (``s3://b/k``, ``file:///tmp/x``), False for plain paths."""
    return isinstance(location, str) and bool(_URI.match(location))


def resolve(location: str | Path, filesystem: pafs.FileSystem | None = None) -> Resolved:
    """The filesystem and inner path of ``location``.

    Local paths become absolute paths on :class:`pyarrow.fs.LocalFileSystem` (``~`` expanded);
    URIs go through :meth:`pyarrow.fs.FileSystem.from_uri`. With ``filesystem`` given, the
    location is taken as a path inside it, unchanged.
    """
    text = str(location)
    if filesystem is not None:
        return Resolved(filesystem, text, text)
    if is_uri(text):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as err:
            raise DataError(f"cannot open {text}: {err}; expected a local path or a URI "
                            "pyarrow supports (s3://, gs://, file://, hdfs://)") from None
        return Resolved(fs, path, text)
    return Resolved(pafs.LocalFileSystem(), str(Path(text).expanduser().absolute()), text)


def join(base: str | Path, *parts: str) -> str:
    """Join ``parts`` onto a path or URI with ``/`` (a URI keeps its scheme and authority).

    Parts are relative names; ``..`` and absolute parts are refused so a joined location never
    leaves ``base``.
    """
    for part in parts:
        pure = PurePosixPath(part)
        if pure.is_absolute() or ".." in pure.parts:
            raise DataError(f"path part {part!r} must be relative and stay inside {base}")
    if is_uri(str(base)):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return str(Path(base).joinpath(*parts))


def local_path(location: str | Path) -> Path | None:
    """The local :class:`~pathlib.Path` of a plain path or ``file://`` URI; None for remote URIs."""
    if not is_uri(str(location)):
        return Path(location).expanduser()
    if str(location).startswith("file://"):
        return Path(resolve(location).path)
    return None


def _info(res: Resolved) -> pafs.FileInfo:
    return res.filesystem.get_file_info(res.path)


def exists(location: str | Path, filesystem: pafs.FileSystem | None = None) -> bool:
    """True when a file or folder exists at ``location``."""
    return _info(resolve(location, filesystem)).type != pafs.FileType.NotFound


def is_file(location: str | Path, filesystem: pafs.FileSystem | None = None) -> bool:
    """True when ``location`` is a file."""
    return _info(resolve(location, filesystem)).type == pafs.FileType.File


def is_dir(location: str | Path, filesystem: pafs.FileSystem | None = None) -> bool:
    """True when ``location`` is a folder (on object stores: a non-empty prefix or a marker)."""
    return _info(resolve(location, filesystem)).type == pafs.FileType.Directory


def makedirs(location: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
    """Create a folder and its parents (no error when it exists)."""
    res = resolve(location, filesystem)
    res.filesystem.create_dir(res.path, recursive=True)


def listdir(location: str | Path, filesystem: pafs.FileSystem | None = None,
            include_hidden: bool = False) -> list[str]:
    """Sorted names (not paths) directly inside a folder; hidden names (``.x``) left out by default.

    A missing folder is a :class:`~raydbb.errors.DataError`.
    """
    res = resolve(location, filesystem)
    if _info(res).type != pafs.FileType.Directory:
        raise DataError(f"{res.uri} is not a folder")
    infos = res.filesystem.get_file_info(pafs.FileSelector(res.path, recursive=False))
    names = sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)
    return names if include_hidden else [n for n in names if not n.startswith(".")]


def read_bytes(location: str | Path, filesystem: pafs.FileSystem | None = None) -> bytes:
    """The whole content of a file; a missing file is a one-line :class:`DataError`."""
    res = resolve(location, filesystem)
    if _info(res).type != pafs.FileType.File:
        raise DataError(f"{res.uri} not found; expected a file")
    with res.filesystem.open_input_stream(res.path) as handle:
        return handle.read()


def read_text(location: str | Path, filesystem: pafs.FileSystem | None = None,
              encoding: str = "utf-8") -> str:
    """A text file's content."""
    return read_bytes(location, filesystem).decode(encoding)


def _parent(path: str) -> str:
    return posixpath.dirname(path.rstrip("/"))


def write_bytes(location: str | Path, data: bytes, filesystem: pafs.FileSystem | None = None) -> str:
    """Write ``data`` to ``location`` (parents created) so readers see the old or the new file only.

    Returns the location as given. Local-like filesystems: temporary hidden name in the same
    folder, then a move (a rename on one filesystem). Object stores: a direct upload, which is
    already all-or-nothing.
    """
    res = resolve(location, filesystem)
    fs = res.filesystem
    parent = _parent(res.path)
    if parent:
        fs.create_dir(parent, recursive=True)
    if fs.type_name in _OBJECT_STORES:
        with fs.open_output_stream(res.path) as handle:
            handle.write(data)
        return res.uri
    tmp = posixpath.join(parent, f".{posixpath.basename(res.path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with fs.open_output_stream(tmp) as handle:
            handle.write(data)
        fs.move(tmp, res.path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise
    return res.uri


def write_text(location: str | Path, text: str, filesystem: pafs.FileSystem | None = None,
               encoding: str = "utf-8") -> str:
    """Write a text file atomically (see :func:`write_bytes`)."""
    return write_bytes(location, text.encode(encoding), filesystem)


def delete(location: str | Path, filesystem: pafs.FileSystem | None = None) -> None:
    """Delete a file, or a folder with everything in it; a missing location is not an error."""
    res = resolve(location, filesystem)
    kind = _info(res).type
    if kind == pafs.FileType.File:
        res.filesystem.delete_file(res.path)
    elif kind == pafs.FileType.Directory:
        res.filesystem.delete_dir(res.path)


def write_json(location: str | Path, data: object, filesystem: pafs.FileSystem | None = None) -> str:
    """Write ``data`` as indented JSON, atomically (see :func:`write_bytes`)."""
    return write_text(location, json.dumps(data, indent=2) + "\n", filesystem)


def _umask() -> int:
    status = Path("/proc/self/status")
    if status.is_file():  # Linux: read it without changing it (os.umask is process-wide and racy)
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def creation_mode(directory: bool = False) -> int:
    """The mode a newly created file (or folder) gets under this process's umask.

    Atomic writes go through ``mkstemp``/``mkdtemp``, which make owner-only entries; they take this
    mode before being moved into place, so outputs are as shared as the user's umask says.
    """
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def build_file(dest: str | Path) -> Iterator[str]:
    """A hidden temporary name beside the local file ``dest`` to write to; when the block ends
    normally it gets the umask's mode (:func:`creation_mode`) and replaces ``dest`` by a rename,
    when it raises it is removed. Readers of ``dest`` see the old file or the whole new one."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, creation_mode())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def build_folder(dest: str | Path) -> Iterator[Path]:
    """A hidden sibling of the local folder ``dest`` to write into; when the block ends normally it
    becomes ``dest`` by a rename (an existing ``dest`` is moved aside first and deleted last), and
    when it raises it is removed. Readers of ``dest`` never see a half-written folder."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if dest.exists():
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(dest, old)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def folder_digest(folder: str | Path, ignore: tuple[str, ...] = ()) -> str:
    """SHA-256 (16 hex digits) of every regular file under a local ``folder`` (but the relative
    paths in ``ignore``): relative path and bytes, in sorted order. Memoised on the files' sizes
    and modification times, so a rerun that checks a multi-GB model folder hashes it once per process."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.relative_to(root).as_posix() not in ignore)
    listing = tuple((p.relative_to(root).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _digest(str(root.resolve()), listing)


def json_digest(doc: object, length: int = 16) -> str:
    """SHA-256 (``length`` hex digits) of ``doc`` as JSON with sorted keys (``str`` for anything
    JSON has no type for): the same value for the same content, whatever the key order."""
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:length]


@functools.lru_cache(maxsize=16)
def _digest(root: str, listing: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in listing:
        digest.update(rel.encode() + b"\0")
        with open(Path(root) / rel, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]
