"""Every requirement of requirements/*.in is pinned by its lock (what `make check` runs)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import support

CHECK = support.REPO / "requirements" / "check_locks.py"


def _check(folder) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CHECK), str(folder)], capture_output=True, text=True, timeout=60)


def test_the_locks_pin_every_requirement():
    proc = _check(support.REPO / "requirements")
    assert proc.returncode == 0, proc.stderr


def test_a_new_or_tightened_requirement_makes_the_lock_stale(tmp_path):
    shutil.copytree(support.REPO / "requirements", tmp_path, dirs_exist_ok=True)
    (tmp_path / "tools.in").write_text((tmp_path / "tools.in").read_text() + "left-pad\n")
    (tmp_path / "build.in").write_text((tmp_path / "build.in").read_text() + "pyarrow>=999\n")
    proc = _check(tmp_path)
    assert proc.returncode == 1
    assert "tools.txt does not pin left-pad (tools.in): run `make lock`" in proc.stderr
    assert "build.in wants pyarrow>=999: run `make lock`" in proc.stderr
