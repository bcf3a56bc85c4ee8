"""Throw-away certificates made with openssl: certificate authorities and certificates they sign.

The openssl argument lists are kept as typed on a command line (`# fmt: skip`), not one word per line.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    """A self-signed CA: folder/NAME.key and folder/NAME.pem, valid 2 days."""
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "2", "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip


def make_signed(folder: Path, name: str, ca: str, extension: str) -> None:
    """folder/NAME.key + NAME.pem signed by CA, with one X.509 extension line (SAN, key usage)."""
    (folder / f"{name}.ext").write_text(extension + "\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", f"/CN={name}", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=folder,
    )  # fmt: skip
