"""The run's confinement: every process of a run starts inside a bubblewrap sandbox.

:func:`bwrap_argv` turns a command line into one that runs it under ``bwrap`` with:

* its own user, pid, network, ipc, uts and cgroup namespaces (``--unshare-all``), so the
  host's ``/proc`` of other processes and every host network interface (loopback
  included) are out of sight; ``--die-with-parent`` and ``--new-session``;
* a root file system made of read-only system directories (``/usr`` and the merged-usr
  links, a minimal ``/etc``), the read-only paths the caller names (the interpreter, the
  CLI, the repository's object store), the CA bundle of ``RUN_CA_BUNDLE`` if any, and
  the writable ones (the run's repository, HOME and tmp, mounted at ``/tmp``). Nothing
  else of the host exists inside: not the agent's ``.env``, state or workspace, not other
  repositories or runs;
* when a gateway socket is given, the one way out: the socket is bound at
  :data:`GATEWAY_SOCKET` and ``socat`` bridges ``127.0.0.1:<port>`` inside the sandbox to
  it (the network namespace has only its own loopback), so HTTP clients use
  ``http://127.0.0.1:<port>`` as proxy and model API base URL.

:class:`Sandbox` holds what every run of an agent shares (the bwrap binary, the read-only
paths of the agent's own interpreter and CLI) and runs the start-up :meth:`Sandbox.canary`,
which proves the confinement instead of trusting it: a write outside the run's
directories fails, a listener on the host's loopback receives nothing, the agent's
``.env`` is not there. An agent whose canary fails is not ready and takes no runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from claude_cluster.agent.ca_bundle import SANDBOX_CA_BUNDLE

__all__ = [
    "GATEWAY_SOCKET",
    "Confinement",
    "Sandbox",
    "SandboxUnavailable",
    "bwrap_argv",
]

#: where the gateway's Unix socket appears inside the sandbox
GATEWAY_SOCKET = "/run/claude-cluster/gateway.sock"
#: /usr is bound read-only; these are recreated as the links (merged /usr) or bound
_MERGED_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: the few files of /etc that tools need (users, name service, TLS roots, time zone)
_ETC_RO = (
    "passwd", "group", "hosts", "nsswitch.conf", "host.conf", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "localtime", "alternatives", "ssl", "ca-certificates", "mime.types",
    "os-release", "debian_version", "protocols", "services",
)  # fmt: skip
_CANARY_TIMEOUT = 20.0


class SandboxUnavailable(Exception):
    """The sandbox cannot be used on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Confinement:
    """What one sandboxed process may touch.

    Attributes:
        writable: directories bound read-write at their own path (repository, HOME).
        tmp: the directory mounted read-write at ``/tmp``.
        readable: directories or files bound read-only at their own path.
        gateway_socket: the host side of the gateway's Unix socket, if the run may talk
            to the outside at all.
        gateway_port: the loopback port inside the sandbox that reaches the gateway.
        ca_bundle: the CA bundle the run's tools trust (``RUN_CA_BUNDLE`` with the system
            roots), bound read-only at :data:`SANDBOX_CA_BUNDLE`.
    """

    writable: tuple[Path, ...]
    tmp: Path
    readable: tuple[Path, ...] = ()
    gateway_socket: Path | None = None
    gateway_port: int = 3128
    ca_bundle: Path | None = None


def bwrap_argv(
    argv: Sequence[str],
    confinement: Confinement,
    *,
    cwd: Path,
    bwrap: str = "bwrap",
    socat: str = "/usr/bin/socat",
) -> list[str]:
    """The command line that runs ``argv`` in ``cwd`` inside the sandbox ``confinement``.

    Never goes through a shell with caller text: the gateway bridge is a fixed script and
    ``argv`` reaches it as positional parameters.
    """
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in _MERGED_LINKS:
        target = Path("/") / name
        if target.is_symlink():
            args += ["--symlink", os.readlink(target), f"/{name}"]
        elif target.is_dir():
            args += ["--ro-bind", str(target), f"/{name}"]
    for name in _ETC_RO:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    args += ["--proc", "/proc", "--dev", "/dev", "--dir", "/run"]
    args += ["--bind", str(confinement.tmp), "/tmp"]  # noqa: S108 - the run's own tmp
    for path in confinement.readable:
        args += ["--ro-bind", str(path), str(path)]
    for path in confinement.writable:
        args += ["--bind", str(path), str(path)]
    if confinement.ca_bundle is not None:
        args += ["--ro-bind", str(confinement.ca_bundle), SANDBOX_CA_BUNDLE]
    command = list(argv)
    if confinement.gateway_socket is not None:
        args += ["--bind", str(confinement.gateway_socket), GATEWAY_SOCKET]
        listening = f":{confinement.gateway_port:04X} 00000000:0000 0A"
        bridge = (
            f"{socat} TCP-LISTEN:{confinement.gateway_port},bind=127.0.0.1,reuseaddr,fork "
            f"UNIX-CONNECT:{GATEWAY_SOCKET} 2>/dev/null & "
            # wait (at most ~2 s) until the bridge listens, reading /proc/net/tcp with shell
            # builtins only, then become the command
            'i=0; up=; while [ -z "$up" ] && [ $i -lt 400 ]; do '
            "while read -r l; do case $l in "
            f'*"{listening}"*) up=1;; esac; done < /proc/net/tcp; '
            '[ -n "$up" ] || sleep 0.005; i=$((i+1)); done; exec "$@"'
        )
        command = ["/bin/sh", "-c", bridge, "sh", *command]
    # the root tmpfs (mount points made for the binds) read-only too: writable is only what
    # was bound writable
    args += ["--remount-ro", "/", "--chdir", str(cwd), "--", *command]
    return args


@dataclass
class Sandbox:
    """The sandbox every run of this agent uses.

    Args:
        enabled: ``RUN_SANDBOX``; ``False`` runs everything unconfined (said everywhere).
        readable: read-only paths every run needs (the agent's interpreter, the CLI).
        bwrap: the bubblewrap executable.
    """

    enabled: bool = True
    readable: tuple[Path, ...] = ()
    bwrap: str = "bwrap"
    socat: str = "socat"
    _resolved: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def for_agent(cls, *, enabled: bool, extra_readable: Sequence[Path] = ()) -> Sandbox:
        """The sandbox with the agent's own interpreter (venv and base) readable."""
        paths = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
        paths.update(Path(p).resolve() for p in extra_readable)
        # /usr is bound anyway; a path under it needs no bind of its own
        kept = sorted(p for p in paths if not _under(p, Path("/usr")))
        return cls(enabled=enabled, readable=tuple(kept))

    def check(self) -> None:
        """Raise :class:`SandboxUnavailable` when bwrap or socat is missing."""
        for name in ("bwrap", "socat"):
            found = shutil.which(getattr(self, name))
            if found is None:
                raise SandboxUnavailable(
                    f"{name} is not installed: install Debian's "
                    f"{'bubblewrap' if name == 'bwrap' else 'socat'} package "
                    "(scripts/setup does), or set RUN_SANDBOX=off to run unconfined"
                )
            self._resolved[name] = found

    def confinement(
        self,
        *,
        writable: Sequence[Path],
        tmp: Path,
        readable: Sequence[Path] = (),
        gateway_socket: Path | None = None,
        gateway_port: int = 3128,
        ca_bundle: Path | None = None,
    ) -> Confinement:
        return Confinement(
            writable=tuple(writable),
            tmp=tmp,
            readable=(*self.readable, *readable),
            gateway_socket=gateway_socket,
            gateway_port=gateway_port,
            ca_bundle=ca_bundle,
        )

    def wrap(self, argv: Sequence[str], confinement: Confinement | None, *, cwd: Path) -> list[str]:
        """``argv`` confined, or unchanged when the sandbox is off or no confinement given."""
        if not self.enabled or confinement is None:
            return list(argv)
        if not self._resolved:
            self.check()
        return bwrap_argv(
            argv,
            confinement,
            cwd=cwd,
            bwrap=self._resolved["bwrap"],
            socat=self._resolved["socat"],
        )

    async def canary(self, *, secret_files: Sequence[Path], forbidden_dirs: Sequence[Path]) -> None:
        """Prove the confinement on this machine; raise :class:`SandboxUnavailable` if not.

        Inside a sandbox like a run's: a file written at each of ``forbidden_dirs`` does
        not reach that directory on the host, none of ``secret_files`` exists, and a
        connection to a listener on the host's loopback fails (the listener must also have
        seen nothing). The writes are judged on the host: the same path inside may be the
        run's own (a directory under ``/tmp`` is the run's tmp there), which is no leak.
        """
        self.check()
        with tempfile.TemporaryDirectory(prefix="cc-canary-") as scratch:
            root = Path(scratch)
            work, tmp = root / "work", root / "tmp"
            work.mkdir()
            tmp.mkdir()
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen(8)
            listener.setblocking(False)
            port = listener.getsockname()[1]
            marker = f".canary-write-{secrets.token_hex(4)}"
            try:
                script = _canary_script(secret_files, forbidden_dirs, port, marker)
                argv = bwrap_argv(
                    ["/bin/sh", "-c", script],
                    Confinement(writable=(work,), tmp=tmp, readable=self.readable),
                    cwd=work,
                    bwrap=self._resolved["bwrap"],
                    socat=self._resolved["socat"],
                )
                code, output = await _run(argv)
                connected = _accepted(listener)
            finally:
                listener.close()
                leaked = _reached(forbidden_dirs, marker)
        if code != 0 or connected or leaked:
            failures = [line for line in output.splitlines() if line.startswith("FAIL")]
            failures += [f"FAIL a process in the sandbox wrote into {path}" for path in leaked]
            if connected:
                failures.append("FAIL a process in the sandbox reached the host's loopback")
            detail = "; ".join(failures) or f"bwrap exited {code}: {output.strip()[-500:]}"
            raise SandboxUnavailable(f"the sandbox canary failed: {detail}")


def _canary_script(
    secret_files: Sequence[Path], forbidden: Sequence[Path], port: int, marker: str
) -> str:
    lines = ["ok=0", "touch ./inside || { echo 'FAIL cannot write the run directory'; ok=1; }"]
    for path in secret_files:
        q = shlex.quote(str(path))
        lines.append(f"if [ -e {q} ]; then echo 'FAIL '{q}' is visible'; ok=1; fi")
    for path in forbidden:  # judged on the host (_reached); in a subshell, since a failed
        # redirection on the special built-in ``:`` ends a POSIX shell
        lines.append(f"( : > {shlex.quote(str(path / marker))} ) 2>/dev/null")
    lines.append("if ( : > /usr/.canary-write ) 2>/dev/null; then echo 'FAIL wrote /usr'; ok=1; fi")
    lines.append(
        f"if socat -u OPEN:/dev/null TCP:127.0.0.1:{port},connect-timeout=1 2>/dev/null; "
        "then echo 'FAIL connected to the host loopback'; ok=1; fi"
    )
    lines.append(
        "n=$(ls -d /proc/[0-9]* | wc -l); "
        'if [ "$n" -gt 10 ]; then echo "FAIL $n host processes visible"; ok=1; fi'
    )
    lines.append("exit $ok")
    return "\n".join(lines)


async def _run(argv: Sequence[str]) -> tuple[int, str]:
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
    except OSError as exc:
        return 127, f"cannot start bwrap: {exc}"
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), _CANARY_TIMEOUT)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        return 124, "the canary did not finish in time"
    return proc.returncode or 0, out.decode(errors="replace")


def _reached(forbidden: Sequence[Path], marker: str) -> list[Path]:
    """The forbidden directories in which the canary's file appeared (removed again)."""
    reached = []
    for path in forbidden:
        written = path / marker
        if written.exists():
            reached.append(path)
            written.unlink(missing_ok=True)
    return reached


def _accepted(listener: socket.socket) -> bool:
    try:
        conn, _ = listener.accept()
    except (BlockingIOError, OSError):
        return False
    conn.close()
    return True


def _under(path: Path, root: Path) -> bool:
    return path == root or root in path.parents
