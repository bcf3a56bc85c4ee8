"""Atomic, versioned export in TF Serving's layout: <base>/<model_name>/<version>/.

A version is written into a hidden temporary folder beside its final place
(TF Serving ignores non-numeric names) and renamed to its number only once it
is complete and verified, so a server polling the base path never sees a
half-written version. Versions are immutable: an existing one is never
overwritten. A lock file serializes version numbering so concurrent builds get
distinct versions; temporary folders of dead builds are swept on the next build.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import tensorflow as tf

from model_builder.errors import ExportError

BUILD_INFO_FILE = Path("assets.extra") / "build_info.json"
_TMP = re.compile(r"^\.tmp-v(\d+)-pid(\d+)$")
_LOCK = ".build.lock"


def versions(model_dir: Path) -> list[int]:
    """Published version numbers under model_dir, ascending."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


@contextlib.contextmanager
def _locked(model_dir: Path) -> Iterator[None]:
    with open(model_dir / _LOCK, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _reserve(model_dir: Path, version: int | None) -> tuple[int, Path]:
    """Under the lock: sweeps dead builds' temp folders, picks the version, creates its temp folder."""
    reserved = []
    for entry in model_dir.iterdir():
        match = _TMP.match(entry.name)
        if not match:
            continue
        if _alive(int(match.group(2))):
            reserved.append(int(match.group(1)))
        else:
            shutil.rmtree(entry, ignore_errors=True)
    published = versions(model_dir)
    if version is None:
        version = max(published + reserved + [0]) + 1
    elif version in published:
        raise ExportError(
            f"{model_dir / str(version)} already exists: versions are immutable; omit --version to get {max(published) + 1}"
        )
    elif version in reserved:
        raise ExportError(
            f"version {version} is being written by another build into {model_dir}; pick another --version"
        )
    tmp = model_dir / f".tmp-v{version}-pid{os.getpid()}"
    tmp.mkdir()
    return version, tmp


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    # Durable before visible: a crash right after the rename must not leave empty files.
    for path in sorted(root.rglob("*"), reverse=True) + [root]:
        _fsync(path)


def _disk_error(err: OSError, where: Path) -> ExportError:
    if err.errno == errno.ENOSPC:
        return ExportError(f"no space left on device while writing {where}: free space or choose another --out")
    if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return ExportError(f"cannot write {where} ({os.strerror(err.errno)}): choose a writable --out")
    return ExportError(f"writing {where} failed: {err}")


def publish(
    base_path: Path,
    model_name: str,
    version: int | None,
    write: Callable[[Path, int], None],
    check: Callable[[Path], None],
) -> Path:
    """Writes a version with `write(tmp_dir, version)`, runs `check(tmp_dir)`, then renames it into place.

    Any failure (including a failed check) removes the temporary folder; the
    previously published versions are untouched.
    """
    model_dir = base_path / model_name
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
        with _locked(model_dir):
            version, tmp = _reserve(model_dir, version)
    except OSError as err:
        raise _disk_error(err, model_dir) from None
    try:
        write(tmp, version)
        _fsync_tree(tmp)
        check(tmp)
        final = model_dir / str(version)
        with _locked(model_dir):
            if final.exists():
                raise ExportError(
                    f"{final} appeared while this build ran: versions are immutable; rebuild to get a new number"
                )
            os.rename(tmp, final)
        # Only the directory entry: walking model_dir would race other builds renaming their temp folders.
        _fsync(model_dir)
        return final
    except OSError as err:
        raise _disk_error(err, tmp) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def save_module(module: tf.Module, signatures: dict, target: Path) -> None:
    """tf.saved_model.save with the signatures; TF's I/O errors become ExportErrors."""
    try:
        tf.saved_model.save(module, str(target), signatures=signatures)
    except tf.errors.OpError as err:
        if "No space left" in err.message:
            raise ExportError(
                f"no space left on device while writing {target}: free space or choose another --out"
            ) from None
        raise ExportError(f"writing {target} failed: {err.message.splitlines()[0]}") from None


def write_build_info(version_dir: Path, info: dict) -> Path:
    """Writes assets.extra/build_info.json (versions, config, data, quality figures)."""
    path = version_dir / BUILD_INFO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    return path


def read_build_info(version_dir: Path) -> dict:
    """Reads build_info.json of a version folder ({} if absent)."""
    path = version_dir / BUILD_INFO_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
