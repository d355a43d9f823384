"""The CA certificates a run's tools trust: the system's roots plus the operator's own.

A private package index (or any host on a run's allowlist) may serve a certificate of a
private CA. ``RUN_CA_BUNDLE`` names a PEM file of such CA certificates; the agent checks
it at start (:func:`check_extra_ca`) and writes one bundle, the system roots followed by
those certificates (:func:`build_ca_bundle`), so that public registries keep working
with the same variables. The bundle is bound read-only into every run's sandbox at
:data:`SANDBOX_CA_BUNDLE` and named to the run's processes by :func:`ca_env` in every
variable the common tools read.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

__all__ = ["CA_VARIABLES", "SANDBOX_CA_BUNDLE", "build_ca_bundle", "ca_env", "check_extra_ca"]

#: where the bundle appears inside a run's sandbox
SANDBOX_CA_BUNDLE = "/run/claude-cluster/ca-certificates.pem"
#: the variables naming a CA file that tools read: OpenSSL and Python's ssl, uv and Go
#: (SSL_CERT_FILE), requests and pip, curl, Node and npm (added to Node's own roots),
#: cargo, git
CA_VARIABLES = (
    "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "PIP_CERT", "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS", "CARGO_HTTP_CAINFO", "GIT_SSL_CAINFO",
)  # fmt: skip
#: where distributions keep their roots, after what OpenSSL itself says
_SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/cert.pem",  # Arch, macOS
)
_BEGIN = "-----BEGIN CERTIFICATE-----"


def check_extra_ca(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a readable PEM file of certificates only.

    A private key in it is refused: the file is shown to every run.
    """
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable PEM file ({exc})") from None
    if "PRIVATE KEY" in text:
        raise ValueError(f"{path} holds a private key; it must hold CA certificates only")
    if _BEGIN not in text:
        raise ValueError(f"{path} holds no PEM certificate")
    try:
        ssl.create_default_context().load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        raise ValueError(f"{path} holds no valid PEM certificate ({exc})") from None


def system_roots() -> Path | None:
    """The host's CA bundle, or ``None`` when none is found."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *_SYSTEM_BUNDLES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def build_ca_bundle(extra: Path, dest: Path) -> Path:
    """Write the system roots and then ``extra``'s certificates to ``dest`` (world-readable:
    it holds public certificates only) and return ``dest``."""
    check_extra_ca(extra)
    roots = system_roots()
    parts = [roots.read_text(encoding="ascii", errors="ignore")] if roots is not None else []
    parts.append(extra.read_text(encoding="ascii"))
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.with_name(dest.name + ".tmp")
    scratch.write_text("\n".join(p.strip() + "\n" for p in parts), encoding="ascii")
    scratch.chmod(0o644)
    os.replace(scratch, dest)
    return dest


def ca_env(bundle: str) -> dict[str, str]:
    """Every :data:`CA_VARIABLES` naming ``bundle`` (its path as the process sees it)."""
    return dict.fromkeys(CA_VARIABLES, bundle)
