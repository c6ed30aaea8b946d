"""The pure demand core: which query measures a Deployment, how samples become per-process demand, and why noise
and outages do not move it. No server here; ``test_demand_prometheus.py`` runs the same code against a real one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from poolbudget.api.models import BUILTIN_PROFILES
from poolbudget.planning.demand import (
    EXPORTERS,
    PROFILE_EXPORTERS,
    Accepted,
    Bounds,
    Health,
    Measurement,
    QueryTemplateError,
    Shape,
    estimate,
    measure,
    measure_totals,
    observe,
    pods_regex,
    quantile,
    range_step,
    render,
    select_queries,
    settle,
    trim_history,
    window_seconds,
)


@dataclass(frozen=True)
class S:
    """A series as a range query returns it."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...] = field(default=())


def series(pod: str | None, *values: float, start: float = 100.0) -> S:
    labels = {"namespace": "shop"} | ({"pod": pod} if pod else {})
    return S(labels, tuple((start + i, v) for i, v in enumerate(values)))


# --- queries -----------------------------------------------------------------------------------------------


def test_render_fills_only_the_known_placeholders_and_keeps_promql_braces() -> None:
    text = render(
        'max_over_time(x{namespace="{namespace}", app="{deployment}", pod=~"{pods}"}[{window}])',
        "shop",
        "web",
        "5m",
    )
    assert text == 'max_over_time(x{namespace="shop", app="web", pod=~"web-[a-z0-9]+-[a-z0-9]+"}[5m])'


def test_a_misspelt_placeholder_is_an_error_naming_it() -> None:
    with pytest.raises(QueryTemplateError, match=r"\{deploy\}"):
        render('x{app="{deploy}"}', "shop", "web", "5m")


def test_pod_regex_escapes_dots_for_a_promql_string() -> None:
    assert pods_regex("web.v2") == "web\\\\.v2-[a-z0-9]+-[a-z0-9]+"


def test_annotation_beats_budget_beats_profile() -> None:
    both = select_queries("shop", "web", "sqlalchemy", "5m", "budget_q", "annotation_q")
    assert (both.in_use, both.pending, both.source) == (
        "annotation_q",
        None,
        "annotation poolbudget.io/demand-query",
    )
    budget = select_queries("shop", "web", "sqlalchemy", "5m", "budget_q{namespace='{namespace}'}")
    assert budget.in_use == "budget_q{namespace='shop'}"
    assert budget.source == "spec.metrics.query"
    default = select_queries("shop", "web", "hikari", "5m")
    assert "hikaricp_connections_active" in default.in_use
    assert default.pending is not None
    assert "hikaricp_connections_pending" in default.pending


def test_an_override_can_name_a_preset() -> None:
    chosen = select_queries("shop", "web", "sqlalchemy", "5m", annotation_query="preset:postgres-exporter")
    assert chosen.in_use == 'sum(pg_stat_activity_count{application_name="shop/web", state!="idle"})'
    assert chosen.pending is None
    with pytest.raises(QueryTemplateError, match="unknown preset 'nope'"):
        select_queries("shop", "web", "sqlalchemy", "5m", "preset:nope")


def test_every_builtin_profile_has_a_preset_and_custom_profiles_get_opentelemetry() -> None:
    assert set(PROFILE_EXPORTERS) == set(BUILTIN_PROFILES)
    assert set(PROFILE_EXPORTERS.values()) <= set(EXPORTERS)
    assert (
        select_queries("shop", "web", "my-custom", "5m").source == "profile my-custom default (opentelemetry)"
    )


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_presets_render_without_leftover_placeholders(name: str) -> None:
    chosen = select_queries("shop", "web", "sqlalchemy", "5m", f"preset:{name}")
    for text in (chosen.in_use, chosen.pending or ""):
        assert "{namespace}" not in text
        assert "{pods}" not in text
        assert "{deployment}" not in text


def test_windows_and_steps() -> None:
    assert window_seconds("90s") == 90
    assert window_seconds("5m") == 300
    assert window_seconds("1h") == 3600
    assert range_step("5s") == 1
    assert range_step("5m") == 5
    assert range_step("1h") == 60
    with pytest.raises(QueryTemplateError):
        window_seconds("5 minutes")


# --- samples -----------------------------------------------------------------------------------------------


def test_a_pod_series_is_divided_by_the_pools_the_pod_runs() -> None:
    # 2 processes x 2 pools (Airflow) per pod: 12 in use in a pod is 3 per pool.
    got = measure([series("web-a-1", 12, 8), series("web-a-2", 4, 4)], [], Shape(pools_per_pod=4, replicas=2))
    assert sorted(got.samples) == [1.0, 1.0, 2.0, 3.0]
    assert (got.instants, got.pods, got.pending_signal) == (2, 2, False)


def test_waiting_requests_are_added_to_the_pod_that_waits() -> None:
    got = measure(
        [series("web-a-1", 5), series("web-a-2", 5)],
        [series("web-a-1", 3)],
        Shape(pools_per_pod=1, replicas=2),
    )
    assert sorted(got.samples) == [5.0, 8.0]
    assert got.pending_signal
    assert got.peak_pending == 3.0


def test_a_total_without_pod_label_stands_for_every_replica() -> None:
    # postgres_exporter: 12 connections of the Deployment, 3 replicas x 2 processes: 2 per process.
    got = measure([series(None, 12)], [], Shape(pools_per_pod=2, replicas=3))
    assert got.samples == (2.0, 2.0, 2.0)
    assert got.pods == 3


def test_nan_and_negative_values_are_not_demand() -> None:
    got = measure([series("web-a-1", float("nan"), -4, 2)], [], Shape(1, 1))
    assert got.samples == (0.0, 2.0)


def test_totals_sampled_over_time() -> None:
    got = measure_totals([(1.0, 8.0), (2.0, 4.0)], Shape(pools_per_pod=1, replicas=2))
    assert sorted(got.samples) == [2.0, 2.0, 4.0, 4.0]


def test_quantile_is_an_observed_value_never_an_interpolation() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    assert quantile(values, 0.5) == 3.0
    assert quantile(values, 0.8) == 4.0
    assert quantile(values, 0.95) == 5.0  # 2 of 20 samples high is enough to show in a p95
    assert quantile([1.0] * 19 + [9.0], 0.95) == 1.0  # 1 of 20 is not
    assert quantile(values, 1.0) == 5.0
    assert quantile([7.0], 0.95) == 7.0


# --- estimate ----------------------------------------------------------------------------------------------

BOUNDS = Bounds(minimum=2, maximum=30, min_change_ratio=0.2, min_change_connections=2)


def m(*samples: float, pending: bool = True) -> Measurement:
    return Measurement(tuple(samples), len(samples), 1, 0.0, pending)


def test_demand_is_the_rounded_up_quantile_within_bounds() -> None:
    assert estimate(m(1, 2, 9.2), 1.0, Shape(1, 1), BOUNDS).demand == 10
    assert estimate(m(0, 0, 0), 0.95, Shape(1, 1), BOUNDS).demand == 2  # never below the minimum
    assert estimate(m(80, 90), 0.95, Shape(1, 1), BOUNDS).demand == 30  # nor above the maximum


def test_a_saturated_pool_without_a_waiting_signal_asks_for_a_step_more() -> None:
    guess = estimate(m(10, 10, 10, pending=False), 0.95, Shape(1, 1, current_per_process=10), BOUNDS)
    assert guess.demand == 12  # 10 + max(2, ceil(0.2 x 10))
    assert "saturated" in guess.why
    # With a waiting signal the waiters say how much more it wants, no guessing.
    assert estimate(m(10, 10, pending=True), 0.95, Shape(1, 1, 10), BOUNDS).demand == 10


# --- hysteresis --------------------------------------------------------------------------------------------


def test_first_measurement_is_accepted() -> None:
    accepted, why = settle(None, 9, now=10.0, bounds=BOUNDS)
    assert accepted == Accepted(9, 10.0, 10.0)
    assert "first" in why


def test_changes_inside_the_deadband_keep_the_previous_demand() -> None:
    before = Accepted(10, 0.0, 0.0)
    kept, why = settle(before, 11, now=5.0, bounds=BOUNDS)
    assert kept.demand == 10
    assert kept.changed_at == 0.0
    assert kept.confirmed_at == 5.0
    assert "deadband" in why
    moved, _ = settle(before, 13, now=5.0, bounds=BOUNDS)
    assert moved == Accepted(13, 5.0, 5.0)


def test_a_fall_waits_for_the_rebalance_interval_a_rise_does_not() -> None:
    before = Accepted(20, 100.0, 100.0)
    held, why = settle(before, 5, now=130.0, bounds=BOUNDS, min_interval_seconds=60)
    assert held.demand == 20
    assert "minIntervalSeconds" in why
    fell, _ = settle(before, 5, now=161.0, bounds=BOUNDS, min_interval_seconds=60)
    assert fell.demand == 5
    rose, _ = settle(before, 28, now=101.0, bounds=BOUNDS, min_interval_seconds=60)
    assert rose.demand == 28  # growth is held back by the transitions' Hysteresis, not twice


@given(
    base=st.integers(2, 30),
    noise=st.lists(st.integers(-100, 100), min_size=1, max_size=30),
)
def test_noise_inside_the_deadband_never_moves_demand(base: int, noise: list[int]) -> None:
    step = BOUNDS.step(base)
    accepted = Accepted(base, 0.0, 0.0)
    for i, n in enumerate(noise):
        proposal = BOUNDS.clamp(base + n % step * (1 if n >= 0 else -1))
        accepted, _ = settle(accepted, proposal, now=float(i + 1), bounds=BOUNDS)
        assert accepted.demand == base


def test_recovery_needs_consecutive_good_reads_but_a_cold_start_one() -> None:
    health = observe(Health(), True, recovery_successes=3)
    assert health.available  # nothing to flap from yet
    health = observe(health, False, 3)
    assert not health.available
    seen = []
    for ok in (True, True, False, True, True, True, True):
        health = observe(health, ok, 3)
        seen.append(health.available)
    assert seen == [False, False, False, False, False, True, True]


def test_history_keeps_the_window() -> None:
    history = trim_history([(1.0, 5.0), (50.0, 6.0)], now=70.0, window=30.0, sample=7.0)
    assert history == ((50.0, 6.0), (70.0, 7.0))


@pytest.mark.parametrize("name", sorted(EXPORTERS))
def test_docs_show_each_preset_query_as_the_code_runs_it(name: str) -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "demand.md").read_text()
    exporter = EXPORTERS[name]
    assert f"`{name}`" in page
    assert exporter.in_use in page
    if exporter.pending:
        assert exporter.pending in page
