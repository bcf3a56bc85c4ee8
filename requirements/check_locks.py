"""Fails when a lock is stale: a requirement of some *.in that its *.txt does not pin, or pins
at a version the requirement excludes. Run by `make check`; `make lock` re-freezes.

dev.txt and bench.txt hold only what build.txt does not pin (lock.sh), so their requirements
may be met by build.txt too. Usage: python requirements/check_locks.py [REQUIREMENTS_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

_ON_TOP_OF_BUILD = ("dev", "bench")


def _lines(path: Path) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]


def pins(path: Path) -> dict[str, str]:
    """name -> version of every `name==version` line of a lock."""
    found = {}
    for line in _lines(path):
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            found[canonicalize_name(name.split("[")[0])] = version.split(";")[0].strip()
    return found


def problems(folder: Path) -> list[str]:
    """One line per stale requirement, naming the lock and the fix."""
    out = []
    build = pins(folder / "build.txt")
    for source in sorted(folder.glob("*.in")):
        lock = source.with_suffix(".txt")
        if not lock.is_file():
            out.append(f"{lock.name} missing: run `make lock`")
            continue
        locked = pins(lock)
        if source.stem in _ON_TOP_OF_BUILD:
            locked = {**build, **locked}
        for line in _lines(source):
            if not line or line.startswith("-"):
                continue
            req = Requirement(line)
            version = locked.get(canonicalize_name(req.name))
            if version is None:
                out.append(f"{lock.name} does not pin {req.name} ({source.name}): run `make lock`")
            elif req.specifier and not req.specifier.contains(version, prereleases=True):
                out.append(f"{lock.name} pins {req.name}=={version}, {source.name} wants {req}: run `make lock`")
    return out


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path(__file__).resolve().parent
    found = problems(folder)
    for line in found:
        print(f"error: stale lock: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
