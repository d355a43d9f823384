"""A package index on loopback for setup tests and benchmarks: no public registry needed.

:class:`PackageIndex` serves, over real HTTP, a PEP 503 "simple" index (``/simple/<name>/``
lists wheel files) and npm tarballs (``/npm/<file>.tgz``). Wheels are built here: a tiny
package of our own (:func:`PackageIndex.add_wheel`), and pytest with its dependencies
repacked from this environment's installed distributions, so the index is complete and
offline. ``uv`` reads it through ``UV_INDEX_URL``; npm installs tarballs by URL.

With ``tls`` it serves HTTPS, which is what a run's gateway tunnels (it proxies no plain
HTTP); ``host`` picks the loopback address, e.g. ``127.0.0.2``, which a run's sandbox
does not exempt from its proxy the way it does ``127.0.0.1``.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as metadata
import io
import ssl
import tarfile
import threading
import time
import zipfile
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.tls import Leaf

#: pytest and what it imports, repacked from this environment
PYTEST_DISTRIBUTIONS = ("pytest", "pluggy", "iniconfig", "packaging", "pygments")


class _Handler(SimpleHTTPRequestHandler):
    #: seconds added to every answer and bytes per second, to stand in for a real registry
    latency = 0.0
    rate: float | None = None
    index: PackageIndex

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        self.index.requests += 1
        return super().send_head()

    def copyfile(self, source: Any, outputfile: Any) -> None:
        time.sleep(self.latency)
        while chunk := source.read(64 * 1024):
            try:
                outputfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                return  # the client had what it needed (npm and uv close early)
            if self.rate:
                time.sleep(len(chunk) / self.rate)


class PackageIndex:
    def __init__(
        self,
        root: Path,
        *,
        latency: float = 0.0,
        rate: float | None = None,
        host: str = "127.0.0.1",
        tls: Leaf | None = None,
    ) -> None:
        """``latency`` (s per request) and ``rate`` (bytes/s) make it behave like a remote
        registry, for benchmarks; tests leave both off. ``tls``: serve HTTPS with it."""
        self.root = root
        (root / "simple").mkdir(parents=True, exist_ok=True)
        (root / "npm").mkdir(exist_ok=True)
        #: requests answered (file or listing), to tell whether anything got through
        self.requests = 0
        fields = {"latency": latency, "rate": rate, "index": self}
        handler = partial(type("Handler", (_Handler,), fields), directory=str(root))
        self._server = ThreadingHTTPServer((host, 0), handler)
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]
        #: ``host:port``, as an allowlist names it
        self.netloc = f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.netloc}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> PackageIndex:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple/"

    def add_wheel(self, name: str, version: str, files: dict[str, str]) -> Path:
        """A pure-Python wheel with ``files`` (path → text) and its metadata."""
        entries = {path: text.encode() for path, text in files.items()}
        return self._write_wheel(name, version, entries)

    def add_pytest(self) -> None:
        """pytest and its dependencies, repacked from the installed distributions."""
        for dist_name in PYTEST_DISTRIBUTIONS:
            dist = metadata.distribution(dist_name)
            entries: dict[str, bytes] = {}
            for file in dist.files or ():
                path = Path(str(dist.locate_file(file)))
                text = str(file)
                if text.startswith("..") or "__pycache__" in text or not path.is_file():
                    continue
                if ".dist-info/" in text and not text.endswith(("METADATA", "entry_points.txt")):
                    continue  # RECORD and WHEEL are written afresh
                entries[text] = path.read_bytes()
            self._write_wheel(dist.metadata["Name"], dist.version, entries, has_metadata=True)

    def add_npm_tarball(self, name: str, version: str, files: dict[str, str]) -> str:
        """An npm package tarball (``package/…`` inside, as ``npm pack`` makes); its URL."""
        target = self.root / "npm" / f"{name}-{version}.tgz"
        manifest = f'{{"name": "{name}", "version": "{version}", "main": "index.js"}}\n'
        with tarfile.open(target, "w:gz") as tar:
            for path, text in {"package.json": manifest, **files}.items():
                data = text.encode()
                info = tarfile.TarInfo(f"package/{path}")
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        return f"{self.url}/npm/{target.name}"

    def _write_wheel(
        self, name: str, version: str, entries: dict[str, bytes], *, has_metadata: bool = False
    ) -> Path:
        normal = name.lower().replace("_", "-")
        stem = f"{normal.replace('-', '_')}-{version}"
        info = f"{stem}.dist-info"
        if not has_metadata:
            entries[f"{info}/METADATA"] = (
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
            )
        else:  # the installed dist-info keeps its own folder name
            entries = {
                (f"{info}/{k.split('/', 1)[1]}" if ".dist-info/" in k else k): v
                for k, v in entries.items()
            }
        entries[f"{info}/WHEEL"] = (
            b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in entries.items()]
        entries[f"{info}/RECORD"] = ("\n".join([*record, f"{info}/RECORD,,"]) + "\n").encode()
        folder = self.root / "simple" / normal
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{stem}-py3-none-any.whl"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel:
            for path, data in entries.items():
                wheel.writestr(path, data)
        return target


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
