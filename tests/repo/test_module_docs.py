"""Each folder's README names every module in it, so a newcomer can find where a thing lives."""

from __future__ import annotations

import pytest

import support


@pytest.mark.parametrize("folder", ["model_builder", "benchmarks"])
def test_the_readme_names_every_module(folder):
    root = support.REPO / folder
    readme = (root / "README.md").read_text()
    modules = sorted(
        p.relative_to(root)
        for p in root.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py") and "registry" not in p.parts
    )
    missing = [str(m) for m in modules if f"`{m.name}`" not in readme and f"`{m}`" not in readme]
    assert not missing, f"{folder}/README.md does not name: {missing}"
