"""What a fresh clone needs: nothing tracked may point at the machine that committed it.

A symlink to an absolute path (or out of the checkout) and an absolute path into a
build machine's home, workspace or temp folder work on that machine and break every
other one (issue 9: a tracked `.venv-compat` link into /tmp failed `make test` at once).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

import support

REPO = support.REPO
# Text files only; committed benchmark plots are binary.
_BINARY_SUFFIXES = {".png", ".gz", ".npz", ".npy", ".parquet", ".so", ".whl"}
_ABSOLUTE = re.compile(r"(?<![\w.:/-])(/(?:[\w.+-]+/)*[\w.+-]+)")


def _tracked() -> list[tuple[str, str]]:
    out = subprocess.run(["git", "ls-files", "-s", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    entries = []
    for record in filter(None, out.split(b"\0")):
        meta, path = record.decode().split("\t", 1)
        entries.append((meta.split()[0], path))
    return entries


def _machine_roots() -> list[str]:
    """Folders that exist on a build machine but not in a clone or an image: homes, the workspace, temp."""
    roots = {str(Path.home()), "/home", "/root", "/Users", str(REPO.parent)}
    for name in ("PYENV_ROOT", "VIRTUAL_ENV", "TMPDIR"):
        if os.environ.get(name):
            roots.add(os.environ[name])
    return sorted(r.rstrip("/") for r in roots if r not in ("", "/"))


def _temp_roots() -> list[str]:
    return sorted({tempfile.gettempdir(), "/tmp", "/var/tmp"})


def test_no_tracked_symlink_points_outside_the_checkout():
    bad = []
    for mode, path in _tracked():
        if mode != "120000":
            continue
        target = os.readlink(REPO / path) if (REPO / path).is_symlink() else ""
        resolved = (REPO / path).parent.joinpath(target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(REPO.resolve()):
            bad.append(f"{path} -> {target}")
    assert not bad, f"tracked symlinks that only work on one machine (remove them, ignore the venv): {bad}"


def _offending(text: str) -> list[str]:
    hits = []
    machine, temp = _machine_roots(), _temp_roots()
    for match in _ABSOLUTE.finditer(text):
        path = match.group(1)
        if any(path.startswith(r + "/") for r in machine):
            hits.append(path)
        # Temp paths are also container-side paths in Dockerfiles (/tmp/wheelhouse): only one whose
        # first folder under the temp root exists on this machine is the machine's own.
        elif any(path.startswith(r + "/") and Path(r, path[len(r) + 1 :].split("/")[0]).exists() for r in temp):
            hits.append(path)
    return hits


def test_no_tracked_text_file_holds_a_build_machine_path():
    bad = []
    for mode, path in _tracked():
        if mode == "120000" or Path(path).suffix in _BINARY_SUFFIXES:
            continue
        try:
            text = (REPO / path).read_text()
        except (UnicodeDecodeError, FileNotFoundError):
            continue
        bad += [f"{path}: {hit}" for hit in _offending(text)]
    assert not bad, (
        "absolute paths of a build machine in tracked files (make them repo-relative or a variable):\n" + "\n".join(bad)
    )


def test_the_checks_catch_what_they_guard_against(tmp_path):
    # The detector itself: a home path, the workspace and an existing temp folder are caught,
    # container-side and system paths are not.
    existing = tempfile.mkdtemp()
    try:
        text = f"VENV={Path.home()}/.pyenv/versions/3.10.13\nX={REPO.parent}/other\nY={existing}/v310\n"
        assert len(_offending(text)) == 3
        assert (
            _offending("COPY wheelhouse/ /tmp/wheelhouse/\nRUN /opt/venv/bin/pip\n/usr/share/datasets/x /dev/null")
            == []
        )
    finally:
        os.rmdir(existing)
