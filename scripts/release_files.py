#!/usr/bin/env python3
"""Write one model's tracked deploy state for one environment (called by scripts/release.sh).

Usage: release_files.py DEST_DIR, with the release in the environment (MODEL, NAME, VERSION,
IMAGE, CONTENT, PEAK, LOAD, DIRTY, STANDIN, COMMIT, OVERLAY, COMPONENTS, MEMORY_QUANTITY,
STARTUP_THRESHOLD, PROGRESS_DEADLINE, and for a shard's two-version image VERSIONS, PEAK_PER_VERSION,
CONFIG_FILE; release.sh validates them). DEST_DIR sits at
k8s/models/<model>/<something>/, so paths to k8s/overlays and k8s/components are ../../../.

Two files, both meant for review in a pull request:
  release.yaml        what is deployed: the image by digest and the build's measurements, as a
                      ConfigMap marked config.kubernetes.io/local-config (kustomize reads it,
                      drops it from the output; the overlay's `replacements` take the image
                      from it, so an overlay rendered without a release fails)
  kustomization.yaml  how: the overlay, the model's name prefix and labels, selectors that keep
                      each model to its own pods, MODEL_NAME, memory and the startup budget
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

RELEASE_CONFIGMAP = "release-from-make-push"  # k8s/overlays/*/kustomization.yaml replacements
SELECTORS = {  # kind -> (apiVersion, path of its pod selector's labels)
    "Service": ("v1", ("selector",)),
    "PodDisruptionBudget": ("policy/v1", ("selector", "matchLabels")),
    "NetworkPolicy": ("networking.k8s.io/v1", ("podSelector", "matchLabels")),
}


@dataclass(frozen=True)
class Release:
    """One model image released to one environment (the environment variables of release.sh)."""

    model: str
    name: str
    version: str
    image: str
    content: str
    peak: str
    load: str
    dirty: str
    standin: str
    commit: str
    overlay: str
    components: str
    memory_quantity: str
    startup_threshold: str
    progress_deadline: str
    # A keep-versions image (docker/serving/Dockerfile): the versions it carries ("3,4"), each
    # one's measured peak ("3=...,4=..."; peak is their sum) and its baked ModelServerConfig.
    versions: str = ""
    peak_per_version: str = ""
    config_file: str = ""

    @classmethod
    def from_env(cls) -> Release:
        return cls(**{f.name: os.environ.get(f.name.upper(), "") for f in fields(cls)})


def q(value: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    return json.dumps(value)


def release_yaml(r: Release) -> str:
    """The local-config ConfigMap holding what is deployed."""
    data = {
        "image": r.image,
        "model": r.model,
        "version": r.version,
        "content-digest": r.content,
        "git-commit": r.commit or "unknown",
        "git-dirty": r.dirty,
        "standin": r.standin,
        "peak-rss-bytes": r.peak,
        "load-seconds": r.load,
    }
    if r.config_file:
        data |= {
            "versions": r.versions,
            "peak-rss-bytes-per-version": r.peak_per_version,
            "model-config-file": r.config_file,
        }
    body = "".join(f"  {key}: {q(value)}\n" for key, value in data.items())
    return (
        f"# Written by scripts/release.sh (make push / make release) from the labels of the pushed image.\n"
        f"# What k8s/models/{r.model}/{r.overlay} deploys; roll back with `git revert` of the commit that\n"
        "# changed it. Read by kustomize only (local-config): never applied to the cluster.\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n"
        f"  name: {RELEASE_CONFIGMAP}\n"
        '  annotations:\n    config.kubernetes.io/local-config: "true"\n'
        f"data:\n{body}"
    )


def deployment_patch(r: Release) -> dict:
    """Selector, spread, MODEL_NAME, memory and startup budget of the model's Deployment."""
    instance = {"app.kubernetes.io/instance": r.name}
    container: dict = {
        "name": "tf-serving",
        "env": [{"name": "MODEL_NAME", "value": r.model}],
        "startupProbe": {"failureThreshold": int(r.startup_threshold)},
    }
    if r.memory_quantity:
        container["resources"] = {k: {"memory": r.memory_quantity} for k in ("requests", "limits")}
    spread = [
        {"topologyKey": key, "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": {"matchLabels": instance}}
        for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
    ]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "serving"},
        "spec": {
            "progressDeadlineSeconds": int(r.progress_deadline),
            "selector": {"matchLabels": instance},
            "template": {"spec": {"topologySpreadConstraints": spread, "containers": [container]}},
        },
    }


def config_file_patch(r: Release) -> str:
    """JSON patch appending --model_config_file to the args: the Deployment's args replace the
    image's CMD, which for a keep-versions image ends with that flag (docker/serving/Dockerfile)."""
    op = {
        "op": "add",
        "path": "/spec/template/spec/containers/0/args/-",
        "value": f"--model_config_file={r.config_file}",
    }
    return dump([op])


def selector_patch(kind: str, name: str) -> dict:
    """Puts the model's instance label into the pod selector of a Service, PDB or NetworkPolicy."""
    api, path = SELECTORS[kind]
    selector: dict = {"app.kubernetes.io/instance": name}
    for key in reversed(path):
        selector = {key: selector}
    return {"apiVersion": api, "kind": kind, "metadata": {"name": "serving"}, "spec": selector}


def dump(data: dict) -> str:
    """YAML for review: key order kept, no anchors, multi-line strings (the patches) as blocks."""
    import yaml  # the tools venv's PyYAML (release.sh checks it)

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data):
            return True

    def text(dumper, value):
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    return yaml.dump(data, Dumper=Dumper, sort_keys=False, width=120)


def kustomization_yaml(r: Release) -> str:
    """The model's kustomization: overlay + components + names, labels, selectors, patches."""
    patches = [deployment_patch(r)] + [selector_patch(kind, r.name) for kind in SELECTORS]
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": ["release.yaml"],
        "components": [f"../../../overlays/{r.overlay}"] + [f"../../../components/{c}" for c in r.components.split()],
        "namePrefix": f"{r.name}-",
        "labels": [
            {
                "pairs": {
                    "app.kubernetes.io/instance": r.name,
                    "app.kubernetes.io/version": f"v{r.version}-{r.content[7:19]}",
                },
                "includeTemplates": True,
            }
        ],
        "patches": [{"target": {"kind": p["kind"]}, "patch": dump(p)} for p in patches],
    }
    if r.config_file:
        body["patches"].append({"target": {"kind": "Deployment"}, "patch": config_file_patch(r)})
    budget = int(r.startup_threshold) * 10
    memory = f"{r.memory_quantity} (measured peak + headroom)" if r.memory_quantity else "the overlay's, checked"
    if r.config_file:
        memory += f" for versions {r.versions} held together (peak {r.peak} B = {r.peak_per_version})"
    header = (
        f"# Written by scripts/release.sh: model {r.model} v{r.version} in {r.overlay}. Apply with\n"
        f"#   kubectl apply -k k8s/models/{r.model}/{r.overlay} --prune -l app.kubernetes.io/instance={r.name}\n"
        f"# (make deploy). From the build's measurements (release.yaml): memory {memory};\n"
        f"# startup budget {budget} s = max(60, 3 x {r.load} s load + 60 s) (scripts/k8s_memory.py).\n"
    )
    return header + dump(body)


def main(argv: list[str]) -> int:
    """Write release.yaml and kustomization.yaml into argv[0]."""
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    release = Release.from_env()
    dest = Path(argv[0])
    (dest / "release.yaml").write_text(release_yaml(release))
    (dest / "kustomization.yaml").write_text(kustomization_yaml(release))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
