"""The local stack's CA and measured ports (:mod:`enclavekit.stack.tls`, :mod:`enclavekit.stack.ports`).

Both feed an enclave's measured configuration, so a restart of the whole stack must find the same CA and the same
port, or PCR0 (and everything the KMS releases to it) changes. And ``stack/`` is the layer below the services: its
helpers must not reach up into a service to get them.
"""

from __future__ import annotations

import ast
import json
import stat
from pathlib import Path

from cryptography import x509

from enclavekit.stack.ports import stable_port
from enclavekit.stack.tls import ensure_provider_tls, write_private

STACK = Path(__file__).resolve().parents[1] / "src" / "enclavekit" / "stack"


def test_a_restart_keeps_the_measured_port(tmp_path: Path) -> None:
    record = tmp_path / "ports.json"
    first = stable_port(record, "kms", "127.0.0.1")
    capture = stable_port(record, "capture", "127.0.0.1")
    assert stable_port(record, "kms", "127.0.0.1") == first
    assert json.loads(record.read_text()) == {"kms": first, "capture": capture}  # other names are kept


def test_a_restart_keeps_the_measured_ca_and_its_key_stays_private(tmp_path: Path) -> None:
    made = ensure_provider_tls(tmp_path / "tls", "127.0.0.1")
    again = ensure_provider_tls(tmp_path / "tls", "127.0.0.1")
    assert again.ca_pem == made.ca_pem and again.cert_file == made.cert_file
    assert stat.S_IMODE(made.key_file.stat().st_mode) == 0o600
    leaf = x509.load_pem_x509_certificates(made.cert_file.read_bytes())[0]
    ca = x509.load_pem_x509_certificate(made.ca_pem.encode())
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_a_half_written_private_file_is_never_read(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_private(target, b"old")
    write_private(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret"]  # no temporary left behind


def test_stack_imports_no_service() -> None:
    """No module of ``stack/`` imports from ``services/``: ``up`` finds the services' parts by discovery."""
    offenders = []
    for module in sorted(STACK.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [f"{module.name}: {name}" for name in names if name.startswith("enclavekit.services")]
    assert offenders == []
