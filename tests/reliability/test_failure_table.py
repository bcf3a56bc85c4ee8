"""The README's failure-behaviour table stays true: every test a row names exists (file, function, case id)."""

from __future__ import annotations

import re

import support

# `tests/x/test_y.py::test_z[case]`, `test_y.py::test_z`, `::test_z`, `[case]` -- later ones reuse the earlier parts.
_REF = re.compile(r"`((?:tests/[\w/]+/)?test_\w+\.py)?(::\w+)?(\[[^\]`]+\])?`")


def _rows() -> list[tuple[str, str]]:
    text = (support.REPO / "README.md").read_text()
    section = text.split("## Failure behaviour", 1)[1].split("\n## ", 1)[0]
    rows = [
        line
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| Fault") and "---" not in line
    ]
    return [(row.split("|")[1].strip(), row.rstrip(" |").rsplit("|", 1)[1]) for row in rows]


def _references(cell: str) -> list[tuple[str, str, str | None]]:
    refs, path, function = [], None, None
    for file, name, case in _REF.findall(cell):
        if file:
            path = file if file.startswith("tests/") else f"tests/reliability/{file}"
            function = None
        if name:
            function = name[2:]
        if path and function and (name or case):
            refs.append((path, function, case[1:-1] if case else None))
    return refs


def test_every_row_names_tests_that_exist():
    rows = _rows()
    assert len(rows) > 20
    missing = []
    for fault, cell in rows:
        refs = _references(cell)
        if not refs:
            missing.append(f"{fault}: names no test")
        for path, function, case in refs:
            source = support.REPO / path
            if not source.is_file() or not re.search(rf"^def {function}\(", source.read_text(), re.M):
                missing.append(f"{fault}: {path}::{function} does not exist")
            elif case and case != "*" and not case.endswith("-*") and f'"{case}"' not in source.read_text():
                missing.append(f"{fault}: {path}::{function}[{case}] names no case of that test")
    assert missing == [], missing
