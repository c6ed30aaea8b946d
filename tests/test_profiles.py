"""Every profile's env output, read back the way each app reads it."""

import json

import pytest

from poolbudget.api.models import CustomProfile
from poolbudget.profiles import PoolSettings, ProfileError, builtin_profiles, resolve_profile

SETTINGS = PoolSettings(pool_size=6, max_overflow=4, pool_timeout=20, pool_recycle=900, pool_pre_ping=True)


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        (
            "sqlalchemy",
            {"DB_POOL_SIZE": "6", "DB_MAX_OVERFLOW": "4", "DB_POOL_TIMEOUT": "20", "DB_POOL_RECYCLE": "900"},
        ),
        (
            "letta",
            {
                "LETTA_PG_POOL_SIZE": "6",
                "LETTA_PG_MAX_OVERFLOW": "4",
                "LETTA_PG_POOL_TIMEOUT": "20",
                "LETTA_PG_POOL_RECYCLE": "900",
                "LETTA_DISABLE_SQLALCHEMY_POOLING": "false",
            },
        ),
        (
            "airflow",
            {
                "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_SIZE": "6",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_MAX_OVERFLOW": "4",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_POOL_RECYCLE": "900",
            },
        ),
        (
            "hikari",
            {"SPRING_DATASOURCE_HIKARI_MINIMUMIDLE": "6", "SPRING_DATASOURCE_HIKARI_MAXIMUMPOOLSIZE": "10"},
        ),
        ("psycopg-pool", {"DB_POOL_MIN_SIZE": "6", "DB_POOL_MAX_SIZE": "10", "DB_POOL_TIMEOUT": "20"}),
    ],
)
def test_env_names_and_values(profile: str, expected: dict[str, str]) -> None:
    rendered = resolve_profile(profile).render(SETTINGS, {})
    assert rendered == expected


@pytest.mark.parametrize("name", sorted(builtin_profiles()))
def test_every_profile_reads_back_what_it_wrote(name: str) -> None:
    profile = resolve_profile(name)
    back = profile.read(profile.render(SETTINGS, {}))
    assert back is not None
    assert back.total == SETTINGS.total
    if profile.has_overflow:
        assert (back.pool_size, back.max_overflow) == (6, 4)


def test_airflow_counts_two_pools_per_process_and_pools_without_overflow_say_so() -> None:
    assert resolve_profile("airflow").pools_per_process == 2
    assert not resolve_profile("hikari").has_overflow
    assert not resolve_profile("psycopg-pool").has_overflow
    assert resolve_profile("sqlalchemy").has_overflow


def test_langflow_writes_every_pool_key_and_keeps_the_users_other_keys() -> None:
    user = {
        "LANGFLOW_DB_CONNECTION_SETTINGS": json.dumps(
            {"pool_size": 30, "echo": True, "connect_args": {"x": 1}}
        )
    }
    rendered = resolve_profile("langflow").render(SETTINGS, user)
    assert set(rendered) == {"LANGFLOW_DB_CONNECTION_SETTINGS"}
    settings = json.loads(rendered["LANGFLOW_DB_CONNECTION_SETTINGS"])
    assert settings == {
        "pool_size": 6,
        "max_overflow": 4,
        "pool_timeout": 20,
        "pool_pre_ping": True,
        "pool_recycle": 900,
        "echo": True,
        "connect_args": {"x": 1},
    }


def test_langflow_keeps_deprecated_variables_consistent_when_present() -> None:
    user = {"LANGFLOW_POOL_SIZE": "30", "LANGFLOW_MAX_OVERFLOW": "50"}
    profile = resolve_profile("langflow")
    rendered = profile.render(SETTINGS, user)
    assert rendered["LANGFLOW_POOL_SIZE"] == "6"
    assert rendered["LANGFLOW_MAX_OVERFLOW"] == "4"
    # Langflow lets the deprecated variables win over the JSON, so the user's stale ones would have won.
    stale = {**rendered, "LANGFLOW_POOL_SIZE": "30"}
    assert profile.read(stale) == PoolSettings(30, 4, 20, 900, True)
    assert profile.read(rendered) == PoolSettings(6, 4, 20, 900, True)


def test_langflow_reads_its_own_defaults_and_engine_defaults_under_a_partial_json() -> None:
    profile = resolve_profile("langflow")
    assert profile.read({}) == PoolSettings(20, 30, 30, 1800, True)
    partial = profile.read({"LANGFLOW_DB_CONNECTION_SETTINGS": '{"pool_size": 3}'})
    assert partial is not None
    assert (partial.pool_size, partial.max_overflow) == (3, 10)  # the JSON replaced Langflow's whole dict


def test_letta_left_on_nullpool_has_no_readable_pool_size() -> None:
    letta = resolve_profile("letta")
    assert letta.read({"LETTA_PG_POOL_SIZE": "5"}) is None
    assert letta.read({"LETTA_DISABLE_SQLALCHEMY_POOLING": "false"}) == PoolSettings(25, 10, 30, 1800, True)


def test_custom_profile_renders_templates_and_reads_plain_fields_back() -> None:
    spec = CustomProfile.model_validate(
        {
            "name": "gorm",
            "env": [
                {"name": "MAX_OPEN_CONNS", "value": "{total}"},
                {"name": "MAX_IDLE_CONNS", "value": "{poolSize}"},
                {"name": "DB_OPTS", "value": "pool={poolSize}&timeout={poolTimeout}s"},
            ],
        }
    )
    profile = resolve_profile("gorm", [spec])
    rendered = profile.render(SETTINGS, {})
    assert rendered == {"MAX_OPEN_CONNS": "10", "MAX_IDLE_CONNS": "6", "DB_OPTS": "pool=6&timeout=20s"}
    assert profile.read(rendered) == PoolSettings(6, 4)


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'djang0' \(known: sqlalchemy, langflow"):
        resolve_profile("djang0")
