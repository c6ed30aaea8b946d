"""Run PromQL against a Prometheus server through prometheus-api-client, without blocking the event loop.

Facts only: this module knows nothing of budgets, demand or plans. Each call builds a
``PrometheusConnect(url, disable_ssl=True)``, runs one query in a worker thread (``asyncio.to_thread``), bounds
it with ``timeout`` (the HTTP request's own timeout, and an asyncio backstop a little later) and turns every
failure into a typed :class:`PrometheusError` whose message names the server without its credentials.
Retries are off: the caller measures again on its next round, and a down server should fail in milliseconds,
not after the client's default back-off.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.util.retry import Retry

__all__ = [
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


def _client(url: str, timeout: float) -> PrometheusConnect:
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
    base = redact_prometheus_url(url).rstrip("/")
    return PrometheusConnect(
        base,
        disable_ssl=True,
        auth=auth,
        retry=Retry(total=0, connect=0, read=0, redirect=0, status=0, raise_on_status=False),
        timeout=max(1, round(timeout)),
    )


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
) -> list[RangeSeries]:
    """Evaluate ``promql`` at ``start, start + step, ... <= end`` (unix seconds); one entry per series.

    No match is an empty list, not an error. Raises :class:`PrometheusUnreachable`,
    :class:`PrometheusQueryFailed` or :class:`PrometheusURLInvalid`.
    """

    def call() -> list[RangeSeries]:
        client = _client(url, timeout)
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
) -> list[RangeSeries]:
    """Evaluate ``promql`` at one instant (``at``, unix seconds; now when None): one single-point series each.

    Raises like :func:`query_range`.
    """

    def call() -> list[RangeSeries]:
        client = _client(url, timeout)
        params = {"time": f"{at:.3f}"} if at is not None else None
        result = client.custom_query(promql, params=params, timeout=timeout)
        out = []
        for item in result:
            if "value" in item:
                out.append(RangeSeries(dict(item["metric"]), _points([item["value"]])))
        return out

    series: list[RangeSeries] = await _run(url, "a query", timeout, call)
    return series
