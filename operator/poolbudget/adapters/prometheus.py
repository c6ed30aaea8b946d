"""Run PromQL against a Prometheus server through prometheus-api-client, without blocking the event loop.

Facts only: this module knows nothing of budgets, demand or plans. Each call builds a ``PrometheusConnect``
that verifies the server's certificate (against a given CA bundle, else the system's; :class:`PrometheusAccess`
also carries a bearer token or basic auth and extra headers), runs one query in a worker thread (``asyncio.to_thread``), bounds
it with ``timeout`` (the HTTP request's own timeout, and an asyncio backstop a little later) and turns every
failure into a typed :class:`PrometheusError` whose message names the server without its credentials.
Retries are off: the caller measures again on its next round, and a down server should fail in milliseconds,
not after the client's default back-off.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
import requests.adapters
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

__all__ = [
    "PrometheusAccess",
    "PrometheusError",
    "PrometheusQueryFailed",
    "PrometheusURLInvalid",
    "PrometheusUnreachable",
    "RangeSeries",
    "query",
    "query_range",
    "redact_prometheus_url",
]

# The asyncio backstop fires this long after the HTTP timeout should have, so the typed error is the HTTP one.
_BACKSTOP_SECONDS = 1.0
_STATUS = re.compile(r"HTTP Status Code (\d+) \((.*)\)\s*$", re.DOTALL)
_MAX_REASON = 300  # characters of a server error message kept in ours


class PrometheusError(Exception):
    """Prometheus could not answer a query. ``url`` is redacted; ``reason`` is short and safe for a status."""

    def __init__(self, message: str, *, url: str, reason: str) -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class PrometheusUnreachable(PrometheusError):
    """No answer: connection refused, DNS failure, timeout, or a 5xx (a server starting up answers 503)."""


class PrometheusQueryFailed(PrometheusError):
    """The server answered and refused the query (4xx: a PromQL syntax error, a bad parameter)."""


class PrometheusURLInvalid(PrometheusError):
    """The URL is not an http(s) URL requests can use."""


@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range query: its labels (``__name__`` included when Prometheus keeps it) and its points."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]  # (unix seconds, value), oldest first


def redact_prometheus_url(url: str) -> str:
    """``url`` without user and password (a Prometheus behind basic auth may carry them in the URL)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid Prometheus URL>"
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if _safe_port(parts) is not None else "")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _safe_port(parts: urllib.parse.SplitResult) -> int | None:
    try:
        return parts.port
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class PrometheusAccess:
    """How to reach one Prometheus, as plain values (the caller reads them from Secrets). ``repr`` hides secrets."""

    ca_pem: str | None = None  # PEM CA bundle the server's certificate must chain to; None: the system's CAs
    verify: bool = True
    bearer_token: str | None = None
    basic_auth: tuple[str, str] | None = None
    headers: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:
        return (
            f"PrometheusAccess(ca={'given' if self.ca_pem else 'system'}, verify={self.verify}, "
            f"bearer={'***' if self.bearer_token else None}, basic={'***' if self.basic_auth else None}, "
            f"headers={[name for name, _ in self.headers]})"
        )


class _TrustingAdapter(requests.adapters.HTTPAdapter):
    """HTTPS that verifies against a CA bundle held in memory (no file: the pod's root filesystem is read-only)."""

    def __init__(self, ca_pem: str, retry: Retry) -> None:
        self._context = ssl.create_default_context(cadata=ca_pem)
        super().__init__(max_retries=retry)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["ssl_context"] = self._context
        super().init_poolmanager(*args, **kwargs)


def _client(url: str, timeout: float, access: PrometheusAccess) -> PrometheusConnect:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PrometheusURLInvalid(
            f"invalid Prometheus URL {redact_prometheus_url(url)!r}: need http(s)://host[:port]",
            url=redact_prometheus_url(url),
            reason="not an http(s) URL",
        )
    auth = None
    if parts.username is not None:
        # Credentials travel as basic auth, never as part of a URL that could end up in a message.
        auth = (urllib.parse.unquote(parts.username), urllib.parse.unquote(parts.password or ""))
    if access.basic_auth is not None:
        auth = access.basic_auth
    headers = dict(access.headers)
    if access.bearer_token is not None:
        headers["Authorization"] = f"Bearer {access.bearer_token}"
    base = redact_prometheus_url(url).rstrip("/")
    retry = Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False)
    session = requests.Session()
    session.verify = access.verify  # PrometheusConnect sets it only on a session of its own
    client = PrometheusConnect(
        base,
        headers=headers or None,
        disable_ssl=not access.verify,
        session=session,
        auth=auth,
        retry=retry,
        timeout=max(1, round(timeout)),
    )
    if access.ca_pem is not None:
        try:
            # Mounted after the client's own adapter for this URL, so this one serves it.
            session.mount(client.url, _TrustingAdapter(access.ca_pem, retry))
        except (ssl.SSLError, ValueError) as exc:
            raise PrometheusURLInvalid(
                f"the CA bundle for Prometheus at {base} is not PEM certificates: {exc}",
                url=base,
                reason="CA bundle unusable",
            ) from None
    return client


def _translate(exc: BaseException, url: str, what: str) -> PrometheusError:
    where = redact_prometheus_url(url)
    if isinstance(exc, PrometheusApiClientException):
        match = _STATUS.match(str(exc))
        status = int(match.group(1)) if match else 0
        detail = _server_error(match.group(2)) if match else str(exc)
        reason = f"HTTP {status}: {detail}"[:_MAX_REASON] if status else detail[:_MAX_REASON]
        kind: type[PrometheusError] = PrometheusQueryFailed if 400 <= status < 500 else PrometheusUnreachable
        return kind(f"Prometheus at {where} refused {what}: {reason}", url=where, reason=reason)
    if isinstance(exc, requests.exceptions.Timeout | TimeoutError):
        reason = "no answer within the timeout"
        return PrometheusUnreachable(f"Prometheus at {where}: {reason}", url=where, reason=reason)
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.MissingSchema):
        reason = "invalid URL"
        return PrometheusURLInvalid(f"Prometheus URL {where!r} is invalid", url=where, reason=reason)
    if isinstance(exc, requests.exceptions.SSLError):
        reason = "TLS verification failed: " + _ssl_reason(exc)
        return PrometheusUnreachable(
            f"cannot reach Prometheus at {where}: {reason} (set metrics.prometheus.caSecretRef to the CA that "
            "signed its certificate)",
            url=where,
            reason=reason,
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason = "connection failed"
        return PrometheusUnreachable(
            f"cannot reach Prometheus at {where}: {reason}", url=where, reason=reason
        )
    if isinstance(exc, ValueError | KeyError | TypeError):  # a 200 whose body is not Prometheus' JSON
        reason = f"unexpected answer ({type(exc).__name__})"
        return PrometheusQueryFailed(f"Prometheus at {where}: {reason}", url=where, reason=reason)
    reason = f"{type(exc).__name__}"
    return PrometheusUnreachable(f"Prometheus at {where} failed: {reason}", url=where, reason=reason)


def _ssl_reason(exc: BaseException) -> str:
    """The OpenSSL verdict (``certificate verify failed: self-signed certificate``) out of requests' nesting."""
    match = re.search(r"\[SSL: [A-Z_]+\] ([^(]+?)(?: \(_ssl|'\)|\)|$)", str(exc))
    return match.group(1).strip()[:_MAX_REASON] if match else "certificate not trusted"


def _server_error(body: str) -> str:
    """Prometheus' own ``error`` text out of the client's ``b'{...}'`` rendering of the body, when it is there."""
    text = body
    if text.startswith(("b'", 'b"')) and text.endswith(("'", '"')):
        text = text[2:-1].encode("utf-8").decode("unicode_escape", errors="replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        return text.strip()
    if isinstance(decoded, dict) and isinstance(decoded.get("error"), str):
        return str(decoded["error"])
    return text.strip()


async def _run(url: str, what: str, timeout: float, call: Any) -> Any:  # noqa: ASYNC109
    try:
        async with asyncio.timeout(timeout + _BACKSTOP_SECONDS):
            return await asyncio.to_thread(call)
    except PrometheusError:
        raise
    except Exception as exc:  # every failure of the client becomes one of ours, typed
        raise _translate(exc, url, what) from None


def _points(values: Any) -> tuple[tuple[float, float], ...]:
    return tuple((float(t), float(v)) for t, v in values)


# `timeout` is part of the adapter's contract (callers pass it), hence ASYNC109's noqa below.
async def query_range(
    url: str,
    promql: str,
    *,
    start: float,
    end: float,
    step: float,
    timeout: float = 10.0,  # noqa: ASYNC109
    access: PrometheusAccess = PrometheusAccess(),
) -> list[RangeSeries]:
    """Evaluate ``promql`` at ``start, start + step, ... <= end`` (unix seconds); one entry per series.

    No match is an empty list, not an error. Raises :class:`PrometheusUnreachable`,
    :class:`PrometheusQueryFailed` or :class:`PrometheusURLInvalid`.
    """

    def call() -> list[RangeSeries]:
        client = _client(url, timeout, access)
        result = client.custom_query_range(
            promql,
            start_time=datetime.fromtimestamp(start, UTC),
            end_time=datetime.fromtimestamp(end, UTC),
            step=f"{step:g}",
            timeout=timeout,
        )
        return [RangeSeries(dict(item["metric"]), _points(item["values"])) for item in result]

    series: list[RangeSeries] = await _run(url, "a range query", timeout, call)
    return series


async def query(
    url: str,
    promql: str,
    *,
    at: float | None = None,
    timeout: float = 10.0,  # noqa: ASYNC109
    access: PrometheusAccess = PrometheusAccess(),
) -> list[RangeSeries]:
    """Evaluate ``promql`` at one instant (``at``, unix seconds; now when None): one single-point series each.

    Raises like :func:`query_range`.
    """

    def call() -> list[RangeSeries]:
        client = _client(url, timeout, access)
        params = {"time": f"{at:.3f}"} if at is not None else None
        result = client.custom_query(promql, params=params, timeout=timeout)
        out = []
        for item in result:
            if "value" in item:
                out.append(RangeSeries(dict(item["metric"]), _points([item["value"]])))
        return out

    series: list[RangeSeries] = await _run(url, "a query", timeout, call)
    return series
