"""TLS on the cluster's own hops.

The coordinator and every agent serve HTTPS with a certificate issued by the cluster's CA
(``TLS_CERT_FILE`` and ``TLS_KEY_FILE``) and verify the other side against that CA
(``TLS_CA_FILE``). Without a certificate a process serves plain HTTP; without a CA file it
verifies against the system's trust store.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Self

from pydantic import field_validator, model_validator
from pydantic_settings import BaseSettings

__all__ = ["KEEP_ALIVE_SECONDS", "TlsSettings", "client_verify"]

#: how long the coordinator and the agents keep an idle client connection open. Longer
#: than httpx's 5 s keep-alive expiry, so that the client always closes first: when the
#: server closed first, a request sent as the close went out failed with a ReadError
#: (seen under a flood, when a busy event loop runs its timers late), and every agent
#: report more than 5 s after the last one paid for a new TLS handshake.
KEEP_ALIVE_SECONDS = 30


class TlsSettings(BaseSettings):
    """The three TLS variables, shared by the coordinator's and the agent's settings."""

    #: PEM certificate (chain) this process serves HTTPS with; empty: plain HTTP
    tls_cert_file: Path | None = None
    #: PEM private key of ``tls_cert_file``
    tls_key_file: Path | None = None
    #: PEM CA bundle the peers' certificates are verified against; empty: system store
    tls_ca_file: Path | None = None

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _tls_files(self) -> Self:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS_CERT_FILE and TLS_KEY_FILE must be set together")
        for name in ("tls_cert_file", "tls_key_file", "tls_ca_file"):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name.upper()}: {path} is not a readable file")
        if self.tls_ca_file is not None:
            try:
                ssl.create_default_context(cafile=str(self.tls_ca_file))
            except ssl.SSLError as exc:
                raise ValueError(
                    f"TLS_CA_FILE: {self.tls_ca_file} holds no PEM CA ({exc})"
                ) from None
        return self

    @property
    def serves_tls(self) -> bool:
        return self.tls_cert_file is not None


def client_verify(ca_file: Path | None) -> ssl.SSLContext | bool:
    """What an httpx client verifies servers with: the cluster CA, else the system store."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))
