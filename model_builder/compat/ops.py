"""Static check: every op a SavedModel uses must exist in the target serving runtime.

Ops are collected from the main graph and from every function in its library
(tf.function bodies live there; that is where the Scann ops are). Unknown
*attributes* are warnings only: TF's loader logs and ignores them (e.g.
VarHandleOp's `debug_name`, added after TF 2.11).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from model_builder import settings
from model_builder.errors import DataError

REGISTRY_DIR = Path(__file__).resolve().parent / "registry"


def default_runtime() -> str:
    """The serving image's runtime named in versions.env, e.g. tf-2.11.0_scann-1.2.9."""
    v = settings.versions()
    return f"tf-{v['COMPAT_TF_VERSION']}_scann-{v['COMPAT_SCANN_VERSION']}"


@dataclass(frozen=True)
class CompatReport:
    """Ops used by the model, and what the target runtime lacks."""

    runtime: str
    ops_used: dict[str, int]
    missing_ops: list[str]
    unknown_attrs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when the runtime registers every op the model uses."""
        return not self.missing_ops


def runtimes() -> list[str]:
    """Names of the registry snapshots shipped with model_builder."""
    return sorted(p.stem for p in REGISTRY_DIR.glob("*.json"))


def load_registry(runtime: str) -> dict[str, list[str]]:
    """Op name -> attribute names of a runtime snapshot."""
    path = REGISTRY_DIR / f"{runtime}.json"
    if not path.is_file():
        raise DataError(
            f"no op registry snapshot '{runtime}' (available: {', '.join(runtimes())}); "
            "generate one with model_builder/compat/snapshot.py in that runtime's env"
        )
    return json.loads(path.read_text())["ops"]


def _saved_model(version_dir: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    pb = version_dir / "saved_model.pb"
    if not pb.is_file():
        raise DataError(f"{version_dir}: no saved_model.pb (expected a version folder BASE/NAME/VERSION)")
    return saved_model_pb2.SavedModel.FromString(pb.read_bytes())


def saved_model_signatures(version_dir: Path) -> dict:
    """The SignatureDefs of the 'serve' MetaGraph, as TF Serving reads them."""
    model = _saved_model(version_dir)
    meta = next((m for m in model.meta_graphs if "serve" in m.meta_info_def.tags), model.meta_graphs[0])
    return dict(meta.signature_def)


def saved_model_ops(version_dir: Path) -> dict[str, dict[str, set[str]]]:
    """Op type -> {"count", "attrs"} over the graph and all library functions."""
    model = _saved_model(version_dir)
    used: dict[str, dict] = {}
    for meta in model.meta_graphs:
        nodes = list(meta.graph_def.node)
        for function in meta.graph_def.library.function:
            nodes.extend(function.node_def)
        for node in nodes:
            entry = used.setdefault(node.op, {"count": 0, "attrs": set()})
            entry["count"] += 1
            entry["attrs"].update(a for a in node.attr if not a.startswith("_"))
    # A node may call a library function by name as its op; that is not a registry op.
    functions = {f.signature.name for meta in model.meta_graphs for f in meta.graph_def.library.function}
    return {op: v for op, v in used.items() if op not in functions}


def check(version_dir: Path, runtime: str | None = None) -> CompatReport:
    """Compares the model's ops with a runtime snapshot (default: the serving image's)."""
    runtime = runtime or default_runtime()
    registry = load_registry(runtime)
    used = saved_model_ops(version_dir)
    missing = sorted(op for op in used if op not in registry)
    unknown = {
        op: sorted(v["attrs"] - set(registry[op]))
        for op, v in used.items()
        if op in registry and v["attrs"] - set(registry[op])
    }
    return CompatReport(runtime, {op: v["count"] for op, v in sorted(used.items())}, missing, unknown)
