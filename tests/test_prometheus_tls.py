"""Prometheus over TLS with basic auth, a real server (its own --web.config.file, a certificate made here): the
adapter verifies the certificate by default, passes with the CA, fails clearly without it, and sends the
credentials and headers it is given; the operator reads them from Secrets and never shows them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest

from poolbudget.adapters.errors import SecretError
from poolbudget.adapters.prometheus import (
    PrometheusAccess,
    PrometheusQueryFailed,
    PrometheusUnreachable,
    query,
)
from poolbudget.api.models import PrometheusAccessSpec
from poolbudget.controller.inputs import prometheus_access
from tests.prometheus import PrometheusServer, start_pods

pytestmark = pytest.mark.prometheus

USER, PASSWORD = "poolbudget", "prom-Secret-91c2"  # recognisable: asserted never to leak


def certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (it is its own CA) and its key."""
    cert, key = directory / "prometheus.crt", directory / "prometheus.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "1", "-subj", "/CN=prometheus-test", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, str]]:
    """A Prometheus that answers only over TLS and only with basic auth; and its CA bundle (PEM)."""
    cert, key = certificate(tmp_path_factory.mktemp("tls"))
    pods = start_pods("shop", "api", 1)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    server = PrometheusServer(
        targets=pods,
        web_config={"tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
                    "basic_auth_users": {USER: hashed}},
        ca_file=cert,
        basic_auth=(USER, PASSWORD),
    ).start()  # fmt: skip
    try:
        yield server, cert.read_text()
    finally:
        server.close()
        for pod in pods:
            pod.stop()


async def test_with_the_ca_and_credentials_the_query_answers(secured: tuple[PrometheusServer, str]) -> None:
    server, ca = secured
    access = PrometheusAccess(ca_pem=ca, basic_auth=(USER, PASSWORD), headers=(("X-Scope-OrgID", "team-a"),))
    series = await query(server.url, "vector(1)", access=access, timeout=5)
    assert [s.points[0][1] for s in series] == [1.0]


async def test_certificates_are_verified_by_default(secured: tuple[PrometheusServer, str]) -> None:
    server, _ = secured
    with pytest.raises(PrometheusUnreachable) as failed:
        await query(server.url, "vector(1)", access=PrometheusAccess(basic_auth=(USER, PASSWORD)), timeout=5)
    assert "TLS verification failed" in str(failed.value)
    assert "certificate verify failed" in failed.value.reason
    assert "caSecretRef" in str(failed.value)  # says what to do


async def test_a_wrong_ca_is_refused_too(secured: tuple[PrometheusServer, str], tmp_path: Path) -> None:
    server, _ = secured
    other, _ = certificate(tmp_path)
    access = PrometheusAccess(ca_pem=other.read_text(), basic_auth=(USER, PASSWORD))
    with pytest.raises(PrometheusUnreachable, match="TLS verification failed"):
        await query(server.url, "vector(1)", access=access, timeout=5)


async def test_without_credentials_the_server_refuses_and_nothing_leaks(
    secured: tuple[PrometheusServer, str],
) -> None:
    server, ca = secured
    with pytest.raises(PrometheusQueryFailed) as refused:
        await query(server.url, "vector(1)", access=PrometheusAccess(ca_pem=ca), timeout=5)
    assert "HTTP 401" in refused.value.reason
    with pytest.raises(PrometheusQueryFailed) as wrong:
        await query(
            server.url,
            "vector(1)",
            access=PrometheusAccess(ca_pem=ca, basic_auth=(USER, "nope-Secret")),
            timeout=5,
        )
    assert "nope-Secret" not in str(wrong.value)
    assert "Secret" not in repr(
        PrometheusAccess(ca_pem=ca, basic_auth=(USER, PASSWORD), bearer_token="tok-Secret")
    )


async def test_insecure_skip_verify_is_an_explicit_choice(secured: tuple[PrometheusServer, str]) -> None:
    server, _ = secured
    access = PrometheusAccess(verify=False, basic_auth=(USER, PASSWORD))
    assert (await query(server.url, "vector(1)", access=access, timeout=5))[0].points[0][1] == 1.0


class SecretsStandIn:
    """The one adapter call ``prometheus_access`` makes, over a dict of Secrets (a test double of the cluster)."""

    def __init__(self, secrets: dict[tuple[str, str], dict[str, str]]) -> None:
        self.secrets = secrets
        self.read: list[tuple[str, str, str]] = []

    async def read_secret_value(self, namespace: str, name: str, key: str) -> str:
        self.read.append((namespace, name, key))
        try:
            return self.secrets[(namespace, name)][key]
        except KeyError:
            raise SecretError(f"Secret {namespace}/{name} has no key {key!r}") from None


class ContextStandIn:
    def __init__(self, cluster: SecretsStandIn) -> None:
        self.cluster = cluster
        self.operator_namespace = "poolbudget-system"


async def test_the_operator_reads_ca_and_credentials_from_secrets(
    secured: tuple[PrometheusServer, str],
) -> None:
    server, ca = secured
    cluster = SecretsStandIn({
        ("poolbudget-system", "prom-ca"): {"ca.crt": ca},
        ("monitoring", "prom-auth"): {"username": USER, "password": PASSWORD},
    })  # fmt: skip
    spec = PrometheusAccessSpec.model_validate({
        "caSecretRef": {"name": "prom-ca", "key": "ca.crt"},
        "basicAuthSecretRef": {"name": "prom-auth", "namespace": "monitoring"},
        "headers": {"X-Scope-OrgID": "team-a"},
    })  # fmt: skip
    context: Any = ContextStandIn(cluster)
    access = await prometheus_access(context, spec)
    assert cluster.read == [("poolbudget-system", "prom-ca", "ca.crt"), ("monitoring", "prom-auth", "username"),
                            ("monitoring", "prom-auth", "password")]  # fmt: skip
    assert (await query(server.url, "vector(1)", access=access, timeout=5))[0].points[0][1] == 1.0

    spec_without_secret = PrometheusAccessSpec.model_validate(
        {"bearerTokenSecretRef": {"name": "gone", "key": "token"}}
    )
    with pytest.raises(SecretError, match="gone"):
        await prometheus_access(context, spec_without_secret)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"headers": {"Authorization": "Bearer x"}}, "is a credential"),
        ({"insecureSkipVerify": True, "caSecretRef": {"name": "a", "key": "ca.crt"}}, "contradict"),
        (
            {"bearerTokenSecretRef": {"name": "a", "key": "t"}, "basicAuthSecretRef": {"name": "b"}},
            "not both",
        ),
    ],
)
def test_contradictory_access_is_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PrometheusAccessSpec.model_validate(spec)


def test_the_secured_server_scrapes_its_targets(secured: tuple[PrometheusServer, str]) -> None:
    """The fixture itself: behind TLS and basic auth it still scrapes (its data is real)."""
    server, _ = secured
    server.wait_for_targets()
    assert [r["metric"]["pod"] for r in server.query("up == 1")] == [server.targets[0].pod]
