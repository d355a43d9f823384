"""RUN_CA_BUNDLE: checked at start, combined with the system roots, bound into the sandbox
and named to the run's tools."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from claude_cluster.agent.ca_bundle import (
    CA_VARIABLES,
    SANDBOX_CA_BUNDLE,
    build_ca_bundle,
    ca_env,
    system_roots,
)
from claude_cluster.agent.daemon import run_ca_bundle
from claude_cluster.agent.runbox import RunBox
from claude_cluster.agent.sandbox import Confinement, bwrap_argv
from claude_cluster.errors import ConfigError
from tests.support.tls import TestCA
from tests.unit.agent.test_daemon_config import _clean_env, settings

__all__ = ["_clean_env"]  # the autouse fixture, for this module too

BEGIN = "-----BEGIN CERTIFICATE-----"


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki", name="private index CA")


def test_a_pem_of_certificates_is_taken_and_an_empty_value_is_unset(
    monkeypatch: pytest.MonkeyPatch, ca: TestCA
) -> None:
    assert settings(monkeypatch, RUN_CA_BUNDLE=str(ca.cert)).run_ca_bundle == ca.cert
    assert settings(monkeypatch, RUN_CA_BUNDLE=" ").run_ca_bundle is None
    assert settings(monkeypatch).run_ca_bundle is None


def test_a_bad_bundle_stops_start_up_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: TestCA
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    broken = tmp_path / "broken.pem"
    broken.write_text(f"{BEGIN}\nAAAA\n-----END CERTIFICATE-----\n")
    leaf = ca.issue("index")
    with_key = tmp_path / "with-key.pem"
    with_key.write_text(ca.cert.read_text() + leaf.key.read_text())
    for path, why in [
        (tmp_path / "missing.pem", "not a readable PEM file"),
        (tmp_path, "not a readable PEM file"),
        (garbage, "holds no PEM certificate"),
        (broken, "holds no valid PEM certificate"),
        # shown to every run: a key in it would be handed to attacker-controlled code
        (with_key, "holds a private key"),
    ]:
        with pytest.raises(ConfigError, match=f"RUN_CA_BUNDLE: .*{why}"):
            settings(monkeypatch, RUN_CA_BUNDLE=str(path))


def test_the_bundle_is_the_system_roots_then_the_extra_ca(tmp_path: Path, ca: TestCA) -> None:
    dest = build_ca_bundle(ca.cert, tmp_path / "out" / "bundle.pem")

    text = dest.read_text()
    roots = system_roots()
    system = roots.read_text().count(BEGIN) if roots is not None else 0
    assert system > 0, "this host has a system CA bundle"
    assert text.count(BEGIN) == system + 1
    assert text.rstrip().endswith(ca.cert.read_text().strip())
    assert dest.stat().st_mode & 0o777 == 0o644
    # both kinds verify: a public root and the private CA
    context = ssl.create_default_context(cafile=str(dest))
    subjects = [dict(x[0] for x in c["subject"]) for c in context.get_ca_certs()]
    assert {"commonName": "private index CA"} in subjects
    assert len(subjects) == system + 1


def test_the_agent_builds_it_at_start_where_a_start_does_not_empty(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca: TestCA
) -> None:
    s = settings(monkeypatch, RUN_CA_BUNDLE=str(ca.cert), WORKSPACE_PATH=str(tmp_path / "ws"))
    bundle = run_ca_bundle(s)
    assert bundle == tmp_path / "ws" / "run-ca-certificates.pem"
    assert bundle.read_text().count(BEGIN) > 1
    assert run_ca_bundle(settings(monkeypatch, RUN_CA_BUNDLE="")) is None


def test_the_bundle_is_bound_read_only_and_named_to_the_runs_tools(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    confined = Confinement(writable=(tmp_path,), tmp=tmp_path / "tmp", ca_bundle=bundle)
    argv = bwrap_argv(["true"], confined, cwd=tmp_path)
    i = argv.index(str(bundle))
    assert argv[i - 1 : i + 2] == ["--ro-bind", str(bundle), SANDBOX_CA_BUNDLE]

    assert ca_env("/x.pem") == dict.fromkeys(CA_VARIABLES, "/x.pem")
    assert {"SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"} <= set(CA_VARIABLES)
    inside = RunBox(None, confined, None, None, ca_bundle=bundle)
    assert inside.ca_env() == ca_env(SANDBOX_CA_BUNDLE)
    unconfined = RunBox(None, None, None, None, ca_bundle=bundle)
    assert unconfined.tool_env() == ca_env(str(bundle))
    assert unconfined.agent_env({"ANTHROPIC_API_KEY": "k"}) == {
        "ANTHROPIC_API_KEY": "k",
        **ca_env(str(bundle)),
    }
    assert RunBox(None, None, None, None).tool_env() == {}
