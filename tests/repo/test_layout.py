"""model_builder's layout follows the pipeline: a stage never imports a later one.

data -> towers -> index -> export -> verify (with compat/) -> serve. Every import statement is read
with `ast` (module level and inside functions alike), so a lazy import cannot hide an edge.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import support

PACKAGE = support.REPO / "model_builder"
STAGES = ["data", "towers", "index", "export", "verify", "serve"]
# Modules every stage may use; they import no stage themselves (build_config holds every stage's
# options, so it is shared without that promise). In compat/, TF's C API and TF Serving's config
# formats are shared; the rest of compat/ is the verify stage's runtime checks.
LEAVES = {"contract", "errors", "settings", "tf_startup", "compat.tf_c_api", "compat.tfs_config", "compat.tfs_batching"}
SHARED = LEAVES | {"scann_import", "build_config"}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")


def _stage(module: str) -> int | None:
    """The stage rank of a model_builder module (None: shared or orchestration)."""
    if module in SHARED:
        return None
    top = module.split(".")[0]
    top = "verify" if top == "compat" else top
    return STAGES.index(top) if top in STAGES else None


def _is_module(name: str) -> bool:
    path = PACKAGE / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir()


def _imports(path: Path) -> set[str]:
    """Every model_builder module `path` imports: `from model_builder.x import y` counts x.y when y is a
    module, else x."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
            names = [n if _is_module(n.removeprefix("model_builder.")) else node.module for n in names]
        else:
            continue
        found.update(n.removeprefix("model_builder.") for n in names if n.startswith("model_builder."))
    return {m for m in found if _is_module(m) and m != "__version__"}


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "registry" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_stage_imports_a_later_stage(path):
    own = _stage(_module_name(path))
    if own is None:
        return
    later = sorted(m for m in _imports(path) if (_stage(m) or 0) > own)
    assert not later, f"{path.relative_to(support.REPO)} ({STAGES[own]}) imports later stages: {later}"


@pytest.mark.parametrize("leaf", sorted(LEAVES))
def test_shared_leaves_import_no_stage(leaf):
    path = (PACKAGE / leaf.replace(".", "/")).with_suffix(".py")
    staged = sorted(m for m in _imports(path) if _stage(m) is not None)
    assert not staged, f"{leaf} is shared by every stage but imports {staged}"


def test_a_scratch_violation_is_caught(tmp_path):
    # The check itself can fail: an index module importing export is reported.
    scratch = tmp_path / "model_builder" / "index"
    scratch.mkdir(parents=True)
    bad = scratch / "bad.py"
    bad.write_text("def f():\n    from model_builder.export import warmup\n    return warmup\n")
    assert "export.warmup" in _imports(bad) and _stage("export.warmup") > _stage("index.search")


def test_the_stage_packages_are_what_ls_shows():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert {"data", "towers", "index", "export", "serve", "compat"} <= folders
    assert (PACKAGE / "verify.py").is_file()


def test_config_and_contract_import_without_tensorflow():
    code = (
        "import sys, model_builder.build_config, model_builder.contract, model_builder.cli, model_builder.compat.tf_c_api; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=support.REPO, check=True)
    assert out.stdout.strip() == "False"
