"""Runs `python -m model_builder build` in a fresh process and reads its result: for benchmarks and tests.

The CLI's last stdout line is one JSON object naming the published version (`"version_dir"`);
everything before it is progress. A fresh process is what a user runs, and it keeps each build's
TensorFlow state out of the caller.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


class BuildRunError(RuntimeError):
    """The build exited non-zero or printed no result line; the message ends with its output's tail."""


@dataclass(frozen=True)
class BuildRun:
    """A finished build: the published version folder and what the process printed."""

    version_dir: Path
    stdout: str
    stderr: str

    def build_info(self) -> dict:
        """The version's assets.extra/build_info.json."""
        return json.loads((self.version_dir / "assets.extra" / "build_info.json").read_text())


def build_command(*args: str, python: str = sys.executable) -> list[str]:
    """The command line of `python -m model_builder build ARGS`."""
    return [python, "-m", "model_builder", "build", *args]


def version_dir_of(stdout: str) -> Path:
    """The version folder named by the build's last stdout line (its JSON result)."""
    lines = stdout.strip().splitlines()
    try:
        return Path(json.loads(lines[-1])["version_dir"])
    except (IndexError, ValueError, KeyError, TypeError):
        tail = "\n".join(lines[-5:]) or "(no output)"
        raise BuildRunError(f"the build printed no result line; its last output:\n{tail}") from None


def run_build(
    *args: str,
    python: str = sys.executable,
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
) -> BuildRun:
    """Runs one build to completion; raises BuildRunError (with the output's tail) when it fails."""
    proc = subprocess.run(
        build_command(*args, python=python),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise BuildRunError(
            f"build {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return BuildRun(version_dir_of(proc.stdout), proc.stdout, proc.stderr)
