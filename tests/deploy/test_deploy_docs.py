"""Client examples in the docs must work when pasted into a backend running in the cluster.

The rule (issue 11): every in-cluster gRPC target is `dns:///` + a model's headless Service
(`<model>-serving-headless`, as scripts/deploy.sh names it) + a namespace the manifests
create (an overlay's `namespace:`) + the gRPC port, so the client's round_robin policy sees
every pod; and the snippet that shows it also names the `scann-serving/client: "true"`
label, without which the NetworkPolicy drops the calls. A ClusterIP target pins each
connection to one pod; a made-up namespace does not resolve.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from support import REPO
from support.deploy import read_versions

DOCS = ["README.md", "client/README.md", "k8s/README.md"]
CLIENT_LABEL = "scann-serving/client"
GRPC_PORT = read_versions()["GRPC_PORT"]
# A host:port that names a Service: <service>.<namespace>[.svc[.cluster.local]]:<gRPC port>.
SERVICE_TARGET = re.compile(
    rf"(?<![\w./-])(?:dns:///)?[A-Za-z<][A-Za-z0-9<>_-]*\.[A-Za-z0-9<>_-]+"
    rf"(?:\.svc(?:\.cluster\.local)?)?:{GRPC_PORT}\b"
)
DNS_TARGET = re.compile(r"dns:///[^\s\"'`),]+")


def headless_name() -> str:
    """The base name of the headless Service (k8s/base/service-headless.yaml); deploy prefixes it."""
    text = (REPO / "k8s/base/service-headless.yaml").read_text()
    return re.search(r"^  name: (\S+)$", text, re.M).group(1)


def overlay_namespaces() -> set[str]:
    """The namespaces the manifests create: each overlay's `namespace:` (k8s/namespace renders with it)."""
    found = set()
    for kustomization in (REPO / "k8s/overlays").glob("*/kustomization.yaml"):
        found.update(re.findall(r"^namespace: (\S+)$", kustomization.read_text(), re.M))
    return found


def valid_target() -> re.Pattern:
    namespaces = "|".join(sorted(overlay_namespaces()))
    return re.compile(
        rf"dns:///[a-z0-9]([a-z0-9-]*[a-z0-9])?-{re.escape(headless_name())}\.({namespaces})"
        rf"\.svc\.cluster\.local:{GRPC_PORT}"
    )


def snippets(text: str) -> list[str]:
    """Fenced code blocks and, outside them, paragraphs: the units a reader copies."""
    parts = re.split(r"(^```.*?^```)", text, flags=re.M | re.S)
    units = []
    for n, part in enumerate(parts):
        units.extend([part] if n % 2 else re.split(r"\n\s*\n", part))
    return units


def problems(text: str) -> list[str]:
    found = []
    rule = valid_target()
    for unit in snippets(text):
        targets = set(DNS_TARGET.findall(unit)) | {m.group(0) for m in SERVICE_TARGET.finditer(unit)}
        for target in sorted(targets):
            if target.startswith(("127.", "localhost")):
                continue
            if not rule.fullmatch(target):
                found.append(
                    f"{target}: not dns:///<model>-{headless_name()}.<{'|'.join(sorted(overlay_namespaces()))}>"
                    f".svc.cluster.local:{GRPC_PORT}"
                )
            elif CLIENT_LABEL not in unit:
                found.append(f"{target}: the snippet does not name the {CLIENT_LABEL} label the NetworkPolicy requires")
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_client_targets_in_the_docs_are_headless_in_a_real_namespace(doc):
    text = (REPO / doc).read_text()
    assert not problems(text), f"{doc}:\n" + "\n".join(problems(text))


def test_the_rule_rejects_what_bit_users():
    """The check itself: the targets the docs used to show fail, the right one passes."""
    label = f'# pod label {CLIENT_LABEL}: "true"\n'
    good = "dns:///scann-model-serving-headless.scann-serving.svc.cluster.local:8500"
    assert not problems(f"```\n{label}{good}\n```")
    assert problems(f"```\n{good}\n```")  # no NetworkPolicy label in the snippet
    for bad in (
        "dns:///scann-serving.scann-serving.svc.cluster.local:8500",  # ClusterIP: one pod per connection
        "dns:///scann-serving.retrieval.svc.cluster.local:8500",  # a namespace nobody creates
        "dns:///scann-model-serving-headless.<namespace>.svc.cluster.local:8500",  # a placeholder
        "scann-model-serving-headless.scann-serving.svc.cluster.local:8500",
    ):  # no dns:///, pick_first
        assert problems(f"```\n{label}{bad}\n```"), bad


def test_the_namespaces_are_the_overlays():
    assert overlay_namespaces() == {"scann-serving", "scann-serving-dev"}


def test_every_doc_exists_and_shows_a_cluster_target():
    """A doc that lost its example would pass the rule vacuously; the deploy docs must show one."""
    for doc in ("k8s/README.md",):
        assert valid_target().search((REPO / doc).read_text()), doc
    for doc in DOCS:
        assert Path(REPO / doc).is_file(), doc
