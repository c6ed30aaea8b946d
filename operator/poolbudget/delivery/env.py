"""Delivery by env: the entries each profile writes into the pod template of an opted-in Deployment."""

from __future__ import annotations

from poolbudget.api.models import PoolBudget
from poolbudget.planning.budget import Managed
from poolbudget.planning.plan import Allocation
from poolbudget.profiles import PoolSettings


def pool_settings(budget: PoolBudget, allocation: Allocation) -> PoolSettings:
    """The settings an allocation means for its app, with the budget's timeout, recycle and pre-ping."""
    d = budget.spec.defaults
    return PoolSettings(
        allocation.pool_size, allocation.max_overflow, d.pool_timeout, d.pool_recycle, d.pool_pre_ping
    )


def desired_env(budget: PoolBudget, managed: Managed, allocation: Allocation) -> dict[str, dict[str, str]]:
    """Per named container, the env entries the profile writes for this allocation."""
    settings = pool_settings(budget, allocation)
    return {c.name: managed.profile.render(settings, c.literal_env()) for c in managed.containers}
