"""The one way mechunlearn writes an output folder, and the rule that it never loses files.

:func:`output_folder` builds an output in a fresh temporary sibling of its destination, writes
a manifest of ours (``.mechunlearn.json``: kind, creation time, package versions, the files
we wrote and the sub-folders we made, empty ones included), then moves the folder into place. The destination may be

- missing or an empty folder: the output is moved there;
- a previous mechunlearn output of the same kind (recognised by its manifest): it is replaced,
  and the old folder's files, which are all ours, are deleted;
- a previous mechunlearn output of another kind: replaced only with ``overwrite=True``.

Which files and folders of a folder are ours is decided by :mod:`mechunlearn.ownership`: those
its manifest lists, and the nested outputs it lists as its own (a sharded store's rank
sub-stores). Another mechunlearn output inside it (the user's FeatureStore in ``OUT/sub``) is
not ours to delete, nor is a folder the user made in it, even an empty one
(``mkdir report/my_notes``). An output written by the previous release lists no folders: see
:mod:`mechunlearn.ownership` for the rule (only the folders its kind always made are ours).

Anything else is refused with a typed error and nothing is touched: a folder holding any file
or folder mechunlearn did not write (``overwrite`` never deletes a user's), an existing regular
file or symbolic link, a path under a regular file, ``/``, the home folder, the working
directory or its parents, and a new output inside one of ours (``report/figures/x``: the report
could no longer be replaced) unless it lists it as nested. Files follow the user's umask.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mechunlearn.atomic import atomic_write_bytes, atomic_write_json, chmod_default
from mechunlearn.errors import ConfigError, OutputExistsError, OutputPathError
from mechunlearn.ownership import (  # noqa: F401 (MANIFEST, FORMAT, Legacy stay importable here)
    FORMAT,
    MANIFEST,
    Legacy,
    nested_outputs,
    read_manifest,
)
from mechunlearn.ownership import enclosing as _enclosing
from mechunlearn.ownership import files as _files
from mechunlearn.ownership import folders as _folders
from mechunlearn.ownership import foreign as _foreign
from mechunlearn.ownership import foreign_error as _foreign_error
from mechunlearn.ownership import read_json as _read_json
from mechunlearn.versions import versions


def _refuse(path: Path, why: str, sub: bool = True) -> OutputPathError:
    hint = f"name a new sub-folder such as {path / 'out'}" if sub else "pick another path"
    return OutputPathError(f"Output path {path} {why}, so it cannot be an output folder: {hint}.")


def check_destination(path: str | os.PathLike[str], kind: str, overwrite: bool = False,
                      legacy: Legacy | None = None) -> Path:
    """Validate an output folder path before any work is done; returns it as an absolute path.

    Raises :class:`OutputPathError` for paths that can never be an output (see the module
    doc; among them a new output inside one of ours that does not list it as nested) and
    :class:`OutputExistsError` for a folder that holds files or folders (even empty ones)
    mechunlearn did not write, or (without ``overwrite``) an output of ours of another kind.
    """
    given = Path(path).expanduser()
    a = Path(os.path.abspath(given))
    r = a.resolve()
    cwd = Path.cwd().resolve()
    if r.parent == r:
        raise _refuse(given, "is the file-system root")
    if r == Path.home().resolve():
        raise _refuse(given, "is your home folder")
    if r == cwd or r in cwd.parents:
        raise _refuse(given, "is the working directory or one of its parents")
    if a.is_symlink():
        raise _refuse(given, "is a symbolic link", sub=False)
    _refuse_under_file(given, a)
    if a.exists() and not a.is_dir():
        raise _refuse(given, "is an existing file, not a folder", sub=False)
    if read_manifest(a) is None:  # an output already there is replaced where it is
        _refuse_inside(given, r)
    if a.is_dir() and any(a.iterdir()):
        found, foreign = _foreign(a, legacy)
        if foreign:
            raise _foreign_error(given, a, found, foreign)
        if found not in (kind, "legacy") and not overwrite:
            raise OutputExistsError(
                f"Output folder {given} holds a previous mechunlearn {found!r} output, not a "
                f"{kind!r}; pick another folder, or pass overwrite=True (CLI: --overwrite) to "
                "replace it."
            )
    return a


def _refuse_inside(given: Path, r: Path) -> None:
    """Refuse ``r`` (resolved) inside an output of ours (:func:`~.ownership.enclosing`)."""
    inside = _enclosing(r)
    if inside is not None:
        folder, kind = inside
        raise OutputPathError(
            f"Output path {given} is inside {folder}, a mechunlearn {kind!r} output, so it "
            f"cannot be an output folder: {folder} could no longer be replaced or resumed "
            f"(it would hold a separate output). Pick a folder outside {folder}.")


def _refuse_under_file(given: Path, a: Path) -> None:
    """Raise :class:`OutputPathError` when the nearest existing ancestor of ``a`` is a file."""
    for anc in a.parents:
        if anc.exists():
            if not anc.is_dir():
                raise _refuse(given, f"is under {anc}, which is a regular file, not a folder",
                              sub=False)
            return


def check_output_file(path: str | os.PathLike[str], overwrite: bool = False,
                      suffixes: Iterable[str] | None = None) -> Path:
    """Validate a single output file's path (a CSV, a PNG) before any work is done.

    Raises :class:`OutputExistsError` for an existing file unless ``overwrite`` (a user's file
    is never replaced silently; CLI: ``--overwrite``), and :class:`OutputPathError` for a
    folder, a symbolic link, a path under a regular file, or a suffix not in ``suffixes``.
    Returns it as an absolute path.
    """
    given = Path(path).expanduser()
    a = Path(os.path.abspath(given))
    if a.is_symlink():
        raise _refuse(given, "is a symbolic link", sub=False)
    if a.is_dir():
        raise OutputPathError(f"Output file {given} is an existing folder; pass a file name "
                              f"such as {given / 'out.csv'}.")
    _refuse_under_file(given, a)
    allowed = [x.lower() for x in suffixes] if suffixes is not None else None
    if allowed is not None and a.suffix.lower() not in allowed:
        raise OutputPathError(f"Output file {given} must end in one of {allowed}.")
    if a.exists() and not overwrite:
        raise OutputExistsError(f"Output file {given} already exists; mechunlearn does not "
                                "replace files silently: pick a new name, or pass "
                                "overwrite=True (CLI: --overwrite) to replace it.")
    side = sidecar_path(a)
    if os.path.lexists(side) and (not overwrite or _read_json(side).get("format") != FORMAT):
        raise OutputExistsError(f"{side} (our sidecar of {given}) already exists and is not "
                                "ours or overwrite is off: pick a new name or --overwrite.")
    return a


def sidecar_path(path: str | os.PathLike[str]) -> Path:
    """``<name>.mechunlearn.json`` beside a single output file ``<name>`` (CSV, PNG)."""
    return Path(path).with_name(Path(path).name + MANIFEST)


def write_sidecar(path: str | os.PathLike[str], kind: str,
                  meta: dict[str, Any] | None = None) -> Path:
    """Record kind, time and package versions of the output file ``path`` in its sidecar
    (atomic; checked by :func:`check_output_file`). A sidecar, not a CSV comment header,
    keeps the file readable by any CSV reader or image viewer."""
    p = Path(path)
    m = {"format": FORMAT, "kind": kind, "file": p.name,
         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "versions": versions(), **(meta or {})}
    return atomic_write_json(sidecar_path(p), m)


def write_output_file(path: str | os.PathLike[str], data: bytes, kind: str,
                      meta: dict[str, Any] | None = None) -> Path:
    """Write one output file atomically, then its sidecar (:func:`write_sidecar`); check
    ``path`` with :func:`check_output_file` before any work."""
    out = atomic_write_bytes(path, data)
    write_sidecar(out, kind, meta)
    return out


def _delete_ours(folder: Path, legacy: Legacy | None) -> None:
    """Delete a replaced output: only the files and folders its manifest makes ours.

    Anything else (a user's file or folder that appeared after the check) is kept, with a
    warning; this is the only place mechunlearn deletes anything of an output.
    """
    _, foreign = _foreign(folder, legacy)
    keep = set(foreign)
    kept_dirs = [f.rstrip("/") for f in foreign if f.endswith("/")]
    for f in _files(folder):
        if f not in keep:
            (folder / f).unlink()
    for d in sorted(_folders(folder), key=lambda d: -d.count("/")):
        if any(d == k or d.startswith(k + "/") for k in kept_dirs):
            continue
        if not any((folder / d).iterdir()):
            (folder / d).rmdir()
    if any(folder.iterdir()):
        warnings.warn(f"Files appeared in the replaced output while writing; kept them in "
                      f"{folder}.", stacklevel=3)
    else:
        folder.rmdir()


def _nested_names(nested: Iterable[str]) -> list[str]:
    names = sorted(set(nested))
    bad = [n for n in names if not n or "/" in n or n in (".", "..", MANIFEST)]
    if bad:
        raise ConfigError(f"nested outputs must be plain sub-folder names, got {bad}.")
    return names


def write_manifest(folder: Path, kind: str, patterns: Iterable[str] = (),
                   meta: dict[str, Any] | None = None,
                   nested: Iterable[str] = ()) -> dict[str, Any]:
    """Write our manifest into ``folder``, listing every file and sub-folder (empty ones too)
    now in it as ours; the ``nested`` sub-folders' contents excepted (each nested output is
    listed by its own manifest). Returns the manifest (a dict, as written)."""
    subs = _nested_names(nested)
    m = {"format": FORMAT, "kind": kind,
         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "versions": versions(), **(meta or {}),
         "files": [f for f in _files(folder)
                   if f != MANIFEST and f.split("/", 1)[0] not in subs],
         "dirs": [d for d in _folders(folder) if d.split("/", 1)[0] not in subs],
         "patterns": list(patterns), "nested": subs}
    atomic_write_json(folder / MANIFEST, m)
    return m


@contextmanager
def output_folder(path: str | os.PathLike[str], kind: str, *, overwrite: bool = False,
                  patterns: Iterable[str] = (), meta: dict[str, Any] | None = None,
                  legacy: Legacy | None = None, nested: Iterable[str] = ()) -> Iterator[Path]:
    """Yield an empty temporary folder to write an output into; on success move it to ``path``.

    Args:
        path: destination folder (rules in the module doc; checked before anything is written).
        kind: what the folder is (``"hf-model"``, ``"report"``, ``"featurestore"``, ...);
            a previous output of the same kind is replaced without ``overwrite``.
        overwrite: also replace a mechunlearn output of another kind. Never a user's file.
        patterns: glob patterns (relative paths) of files the library may add later (e.g.
            ``"shard_*.safetensors"`` for an appendable store); they count as ours.
        meta: extra keys for the manifest.
        legacy: recogniser of outputs written before manifests existed (see :data:`Legacy`).
        nested: names of sub-folders in which the library writes whole outputs of their own
            later (a sharded store's ``rank_00of02``, ...); they are replaced with this output.
            Any other output found inside it is foreign: never deleted, the replacement is
            refused (:class:`OutputExistsError` naming it).

    If the body raises, the temporary folder is deleted and the destination is untouched.
    """
    patterns, subs = list(patterns), _nested_names(nested)
    dest = check_destination(path, kind, overwrite, legacy)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        chmod_default(tmp)
        yield tmp
        for item in tmp.rglob("*"):  # writers such as safetensors/transformers leave 0600
            if not item.is_symlink():
                chmod_default(item)
        write_manifest(tmp, kind, patterns, meta, subs)
        check_destination(dest, kind, overwrite, legacy)  # again: it may have changed meanwhile
        if not os.path.lexists(dest) or not any(dest.iterdir()):
            try:
                os.replace(tmp, dest)  # onto nothing, or onto an empty folder
            except OSError as e:
                raise OutputExistsError(f"Output folder {dest} was filled while writing; "
                                        "nothing was replaced.") from e
        else:
            old = dest.with_name(f".{dest.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(dest, old)
            try:
                os.rename(tmp, dest)
            except BaseException:
                os.rename(old, dest)
                raise
            _delete_ours(old, legacy)
    finally:
        if tmp.exists():  # our own fresh temporary folder: safe to remove whole
            shutil.rmtree(tmp, ignore_errors=True)


def ensure_output_folder(path: str | os.PathLike[str], kind: str, *,
                         patterns: Iterable[str] = (), meta: dict[str, Any] | None = None,
                         legacy: Legacy | None = None, nested: Iterable[str] = (),
                         init: Callable[[Path], Any] | None = None) -> tuple[Path, bool]:
    """Create an appendable output (e.g. a store) via :func:`output_folder`, or reuse ours.

    Returns ``(folder, created)``. An existing folder of the same kind is returned as is
    (``created=False``) so the caller can resume it; ``init(tmp)`` fills a new one.
    """
    dest = check_destination(path, kind, False, legacy)
    if dest.is_dir() and any(dest.iterdir()):
        return dest, False
    with output_folder(dest, kind, patterns=patterns, meta=meta, legacy=legacy,
                       nested=nested) as tmp:
        if init is not None:
            init(tmp)
    return dest, True
