"""The one way mechunlearn writes an output folder, and the rule that it never loses files.

:func:`output_folder` builds an output in a fresh temporary sibling of its destination, writes
a manifest of ours (``.mechunlearn.json``: kind, creation time, package versions and the files
we wrote), then moves the folder into place. The destination may be

- missing or an empty folder: the output is moved there;
- a previous mechunlearn output of the same kind (recognised by its manifest): it is replaced,
  and the old folder's files, which are all ours, are deleted;
- a previous mechunlearn output of another kind: replaced only with ``overwrite=True``.

Anything else is refused with a typed error and nothing is touched: a folder holding any file
mechunlearn did not write (``overwrite`` never deletes a user's file), an existing regular
file or symbolic link, a path under a regular file, ``/``, the home folder, and the working
directory or any of its parents. Folders and files follow the user's umask.
"""

from __future__ import annotations

import fnmatch
import json
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
from mechunlearn.errors import OutputExistsError, OutputPathError
from mechunlearn.versions import versions

MANIFEST = ".mechunlearn.json"
FORMAT = "mechunlearn-output"

#: ``legacy(folder)`` lists the files an older mechunlearn wrote into ``folder`` (before
#: manifests existed), or returns ``None`` if ``folder`` is not such an output.
Legacy = Callable[[Path], Iterable[str] | None]


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Our manifest in ``folder``, or ``None`` if there is none (or it is not ours)."""
    m = _read_json(Path(folder) / MANIFEST)
    return m if m.get("format") == FORMAT else None


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() or p.is_symlink())


def _foreign(folder: Path, legacy: Legacy | None) -> tuple[str | None, list[str]]:
    """``(kind, files we did not write)`` of an existing folder (kind ``None``: not ours)."""
    man = read_manifest(folder)
    if man is not None:
        kind: str | None = str(man.get("kind"))
        owned, patterns = set(man.get("files", [])), list(man.get("patterns", []))
    else:
        listed = legacy(folder) if legacy is not None else None
        if listed is None:
            return None, _files(folder)
        kind, owned, patterns = "legacy", set(listed), []
    owned.add(MANIFEST)
    foreign: list[str] = []
    for entry in sorted(folder.iterdir()):
        rel = entry.name
        if entry.is_dir() and not entry.is_symlink():
            sub_kind, sub_foreign = _foreign(entry, legacy)
            if sub_kind is not None:  # a nested output of ours (e.g. a rank's sub-store)
                foreign += [f"{rel}/{f}" for f in sub_foreign]
                continue
            for f in _files(entry):
                path = f"{rel}/{f}"
                if path not in owned and not any(fnmatch.fnmatch(path, p) for p in patterns):
                    foreign.append(path)
        elif rel not in owned and not any(fnmatch.fnmatch(rel, p) for p in patterns):
            foreign.append(rel)
    return kind, foreign


def _refuse(path: Path, why: str, sub: bool = True) -> OutputPathError:
    hint = f"name a new sub-folder such as {path / 'out'}" if sub else "pick another path"
    return OutputPathError(f"Output path {path} {why}, so it cannot be an output folder: {hint}.")


def check_destination(path: str | os.PathLike[str], kind: str, overwrite: bool = False,
                      legacy: Legacy | None = None) -> Path:
    """Validate an output folder path before any work is done; returns it as an absolute path.

    Raises :class:`OutputPathError` for paths that can never be an output (see the module
    doc) and :class:`OutputExistsError` for a folder that holds files mechunlearn did not
    write, or (without ``overwrite``) a mechunlearn output of another kind.
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
    if a.is_dir() and any(a.iterdir()):
        found, foreign = _foreign(a, legacy)
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5
                                              else "")
            raise OutputExistsError(
                f"Output folder {given} already holds files mechunlearn did not write ({shown}). "
                "mechunlearn never deletes your files, not even with overwrite: pick a new or "
                "empty folder, or move those files away."
            )
        if found not in (kind, "legacy") and not overwrite:
            raise OutputExistsError(
                f"Output folder {given} holds a previous mechunlearn {found!r} output, not a "
                f"{kind!r}; pick another folder, or pass overwrite=True (CLI: --overwrite) to "
                "replace it."
            )
    return a


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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return m if isinstance(m, dict) else {}


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
    """Delete a replaced output: only files it lists as ours, then its emptied folders."""
    _, foreign = _foreign(folder, legacy)
    keep = set(foreign)
    for f in _files(folder):
        if f not in keep:
            (folder / f).unlink()
    for d in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(d.iterdir()):
            d.rmdir()
    if any(folder.iterdir()):
        warnings.warn(f"Files appeared in the replaced output while writing; kept them in "
                      f"{folder}.", stacklevel=3)
    else:
        folder.rmdir()


def write_manifest(folder: Path, kind: str, patterns: Iterable[str] = (),
                   meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write our manifest into ``folder``, listing every file now in it as ours."""
    m = {"format": FORMAT, "kind": kind,
         "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
         "versions": versions(), **(meta or {}),
         "files": [f for f in _files(folder) if f != MANIFEST], "patterns": list(patterns)}
    atomic_write_json(folder / MANIFEST, m)
    return m


@contextmanager
def output_folder(path: str | os.PathLike[str], kind: str, *, overwrite: bool = False,
                  patterns: Iterable[str] = (), meta: dict[str, Any] | None = None,
                  legacy: Legacy | None = None) -> Iterator[Path]:
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

    If the body raises, the temporary folder is deleted and the destination is untouched.
    """
    patterns = list(patterns)
    dest = check_destination(path, kind, overwrite, legacy)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        chmod_default(tmp)
        yield tmp
        for item in tmp.rglob("*"):  # writers such as safetensors/transformers leave 0600
            if not item.is_symlink():
                chmod_default(item)
        write_manifest(tmp, kind, patterns, meta)
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
                         legacy: Legacy | None = None,
                         init: Callable[[Path], Any] | None = None) -> tuple[Path, bool]:
    """Create an appendable output (e.g. a store) via :func:`output_folder`, or reuse ours.

    Returns ``(folder, created)``. An existing folder of the same kind is returned as is
    (``created=False``) so the caller can resume it; ``init(tmp)`` fills a new one.
    """
    dest = check_destination(path, kind, False, legacy)
    if dest.is_dir() and any(dest.iterdir()):
        return dest, False
    with output_folder(dest, kind, patterns=patterns, meta=meta, legacy=legacy) as tmp:
        if init is not None:
            init(tmp)
    return dest, True
