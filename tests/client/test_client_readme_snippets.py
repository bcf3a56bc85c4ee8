"""Docs that run: every ```python block of README.md and client/README.md, executed against the
real local server on the demo's int-id MovieLens model and on a string-id model.

The docs target the headless Service (`dns:///...svc.cluster.local:8500`) and the default model
name; the test substitutes the local server's target and model, and nothing else.
"""

from __future__ import annotations

import contextlib
import io
import re

import pytest

import support

DOCS = [support.REPO / "README.md", support.REPO / "client" / "README.md"]
HEADLESS = "dns:///scann-model-serving-headless.scann-serving.svc.cluster.local:8500"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def snippets():
    found = []
    for doc in DOCS:
        for number, match in enumerate(SNIPPET.finditer(doc.read_text()), 1):
            found.append(pytest.param(doc, match.group(1), id=f"{doc.relative_to(support.REPO)}#{number}"))
    return found


def test_the_docs_have_the_snippets_this_test_runs():
    counts = {
        doc.name if doc.parent == support.REPO else "client/README.md": len(SNIPPET.findall(doc.read_text()))
        for doc in DOCS
    }
    assert counts == {"README.md": 1, "client/README.md": 7}, counts


@pytest.mark.parametrize("doc, code", snippets())
@pytest.mark.parametrize("id_dtype", ["int64", "string"])
def test_snippet_runs_against_the_local_server(doc, code, id_dtype, local_live_servers, tls_files, monkeypatch):
    assert HEADLESS in code, "docs show the headless Service target"
    model, target = local_live_servers[id_dtype].split("@")
    runnable = code.replace(HEADLESS, target).replace('"scann_model"', repr(model))
    # The TLS snippet reads ca.pem, client.pem and client.key from the working directory.
    monkeypatch.chdir(tls_files["ca_pem"].parent)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(runnable, f"{doc.name} snippet", "exec"), {"__name__": "__main__"})
    # Printed results are plain Python values, not numpy scalars or arrays.
    assert not re.search(r"np\.\w+\(|array\(", out.getvalue()), out.getvalue()
    if "no-such-user" in code:
        assert "unknown query id(s), not in this model version" in out.getvalue(), out.getvalue()
