"""Dump the op registry of the TF + ScaNN installed in *this* interpreter to JSON.

Run it inside the serving-runtime env built from the pinned wheels
(`make compat-venv`, requirements/compat.txt):
    .venv-compat/bin/python model_builder/compat/snapshot.py > model_builder/compat/registry/<runtime>.json
Standalone on purpose (that env has only TF, scann and numpy). The JSON maps
every registered op (ScaNN's included, after `import scann`) to its attribute
names; `python -m model_builder check-compat` compares a SavedModel against it.
"""

import importlib.metadata as md
import json
import sys

import scann  # noqa: F401  registers Scann>* ops
from tensorflow.core.framework import op_def_pb2
from tensorflow.python.client import pywrap_tf_session


def registry() -> dict:
    """Every registered op name -> sorted attribute names."""
    buffer = pywrap_tf_session.TF_GetAllOpList()
    ops = op_def_pb2.OpList.FromString(pywrap_tf_session.TF_GetBuffer(buffer))
    return {op.name: sorted(attr.name for attr in op.attr) for op in ops.op}


def main() -> None:
    """Prints the snapshot (stable key order, so regeneration diffs cleanly)."""
    dist = "tensorflow-cpu" if _installed("tensorflow-cpu") else "tensorflow"
    doc = {
        "generated_by": "model_builder/compat/snapshot.py",
        "runtime": {"tensorflow": md.version(dist), "scann": md.version("scann"), "python": sys.version.split()[0]},
        "ops": registry(),
    }
    json.dump(doc, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


def _installed(name: str) -> bool:
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return False
    return True


if __name__ == "__main__":
    main()
