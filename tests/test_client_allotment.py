"""The client helper's pure parts: the allotment file (as the kubelet writes it) and the confirmation tag."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from poolbudget_client import (
    Allotment,
    AllotmentError,
    AllotmentFile,
    format_tag,
    parse_allotment,
    parse_tag,
    pod_id,
)

from tests.kubelet_file_stand_in import KubeletFileStandIn

# -- the allotment file --------------------------------------------------------------------------------------


def test_parse_reads_the_documented_shape_and_ignores_extra_keys() -> None:
    text = '{"generation": 7, "perProcess": {"poolSize": 4, "maxOverflow": 2, "x": 1}, "reason": "scale"}'
    assert parse_allotment(text) == Allotment(generation=7, pool_size=4, max_overflow=2)
    assert parse_allotment(text).total == 6


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        ('{"generation": 1}', "perProcess is missing"),
        ('{"generation": 1, "perProcess": {"maxOverflow": 0}}', "poolSize is missing"),
        ('{"generation": 1, "perProcess": {"poolSize": -1, "maxOverflow": 0}}', "below 1"),
        ('{"generation": 1, "perProcess": {"poolSize": 0, "maxOverflow": 0}}', "below 1"),
        ('{"generation": 1, "perProcess": {"poolSize": 2, "maxOverflow": -3}}', "below 0"),
        ('{"generation": -1, "perProcess": {"poolSize": 2, "maxOverflow": 0}}', "below 0"),
        ('{"perProcess": {"poolSize": 2, "maxOverflow": 0}}', "generation is missing"),
        ('{"generation": 1, "perProcess": {"poolSize": 2.5, "maxOverflow": 0}}', "not an integer"),
        ('{"generation": 1, "perProcess": {"poolSize": true, "maxOverflow": 0}}', "not an integer"),
        ('{"generation": 1, "perProcess": {"poolSize": "4", "maxOverflow": 0}}', "not an integer"),
        ('{"generation": 1, "perProcess": {"poolSize": 9999999, "maxOverflow": 0}}', "above"),
    ],
)
def test_parse_refuses_bad_input_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(AllotmentError, match=problem):
        parse_allotment(text)


@given(
    st.one_of(
        st.text(max_size=200),
        st.builds(
            json.dumps,
            st.recursive(
                st.none() | st.integers(),
                lambda c: st.dictionaries(
                    st.sampled_from(["generation", "perProcess", "poolSize", "maxOverflow"]), c, max_size=4
                ),
            ),
        ),
    )
)
def test_parse_never_raises_anything_but_allotment_error(text: str) -> None:
    try:
        allotment = parse_allotment(text)
    except AllotmentError:
        return
    assert allotment.pool_size >= 1
    assert allotment.max_overflow >= 0
    assert allotment.generation >= 0


def test_reader_follows_the_visible_path_through_every_atomic_swap(tmp_path: Path) -> None:
    kubelet = KubeletFileStandIn(tmp_path / "podinfo")
    source = AllotmentFile(kubelet.path)
    for generation, size in [(1, 2), (2, 5), (3, 1)]:
        kubelet.write_allotment(generation, size, 1)
        assert source.poll() == Allotment(generation, size, 1)
        assert source.poll() is None  # nothing new
    assert kubelet.path.is_symlink()
    assert Path(kubelet.path.parent, "..data").is_symlink()
    assert len([p for p in kubelet.path.parent.iterdir() if p.name.startswith("..20")]) == 1  # old dirs gone


def test_reader_keeps_the_last_good_allotment_and_warns_once_per_problem(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    kubelet = KubeletFileStandIn(tmp_path / "podinfo")
    source = AllotmentFile(kubelet.path)
    caplog.set_level(logging.WARNING, logger="poolbudget_client")
    assert source.poll() is None  # no file yet
    kubelet.write_allotment(4, 3, 2)
    assert source.poll() == Allotment(4, 3, 2)
    for _ in range(3):
        kubelet.write("{broken")
        assert source.poll() is None
    for _ in range(2):  # flapping between two bad states: each told once
        kubelet.write('{"generation": 5, "perProcess": {"poolSize": -2, "maxOverflow": 0}}')
        assert source.poll() is None
        kubelet.write("{broken")
        assert source.poll() is None
    kubelet.write(None)  # the item leaves the payload: the visible file disappears
    assert source.poll() is None
    assert source.current == Allotment(4, 3, 2)
    kubelet.write_allotment(6, 1, 0)
    assert source.poll() == Allotment(6, 1, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "poolbudget_client"]
    assert len(messages) == 4, messages  # no file, malformed, negative, no file again: one warning each
    assert "does not exist" in messages[0]
    assert "pool's own size" in messages[0]
    assert "not valid JSON" in messages[1]
    assert "keeping generation 4" in messages[1]
    assert "below 1" in messages[2]
    assert "does not exist" in messages[3]


# -- the confirmation tag ------------------------------------------------------------------------------------

PODS = st.text(alphabet="0123456789abcdef", min_size=12, max_size=12)


def test_tag_example_from_the_readme() -> None:
    uid = "5f2b9c1e-7d3a-4b6e-9f10-2c4d5e6f7a8b"
    tag = format_tag("billing-api", pod_id(uid) or "", 4242, 7)
    assert tag == "billing-api~pb1.5f2b9c1e7d3a.4242.7"
    assert parse_tag(tag) is not None
    assert parse_tag(tag).generation == 7  # type: ignore[union-attr]
    assert parse_tag("billing-api") is None
    assert format_tag(None, "5f2b9c1e7d3a", 1, 0) == "~pb1.5f2b9c1e7d3a.1.0"


def test_pod_id_falls_back_to_the_pod_name_hash() -> None:
    assert pod_id("5F2B9C1E-7D3A-4B6E-9F10-2C4D5E6F7A8B") == "5f2b9c1e7d3a"
    assert pod_id(None, "web-7d4f9-abcde") == pod_id("not-a-uid", "web-7d4f9-abcde")
    assert len(pod_id(None, "web-7d4f9-abcde") or "") == 12
    assert pod_id(None, None) is None


@given(
    app=st.one_of(st.none(), st.text(max_size=120)),
    pod=PODS,
    process=st.integers(1, 10**10 - 1),
    generation=st.integers(0, 10**19 - 1),
)
def test_tag_fits_postgres_and_parses_back(app: str | None, pod: str, process: int, generation: int) -> None:
    tag = format_tag(app, pod, process, generation)
    assert len(tag.encode()) <= 63
    assert all(0x20 <= ord(c) <= 0x7E for c in tag)  # PostgreSQL stores it unchanged
    parsed = parse_tag(tag)
    assert parsed is not None
    assert (parsed.pod, parsed.process, parsed.generation) == (pod, process, generation)
    cleaned = "".join(c if 0x20 <= ord(c) <= 0x7E else "?" for c in app or "")
    if parse_tag(cleaned) is None:
        assert cleaned.startswith(parsed.app)  # the app's name, cut from the end only
    assert format_tag(tag, pod, process, generation + 1 if generation < 10**19 - 1 else 0).startswith(
        parsed.app
    )


@given(st.text(max_size=80))
def test_parse_tag_never_raises(text: str) -> None:
    parse_tag(text)


def test_reader_racing_the_kubelet_never_sees_a_torn_or_missing_file(tmp_path: Path) -> None:
    kubelet = KubeletFileStandIn(tmp_path / "podinfo")
    kubelet.write_allotment(1, 1, 0)
    source = AllotmentFile(kubelet.path)
    last = 300
    done = threading.Event()

    def write() -> None:
        for generation in range(2, last + 1):
            kubelet.write_allotment(generation, generation % 7 + 1, generation % 3)
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    seen: list[int] = []
    while not done.is_set():
        allotment = source.poll()
        if allotment is not None:
            seen.append(allotment.generation)
    writer.join(10)
    final = source.poll()
    if final is not None:
        seen.append(final.generation)
    assert source.warnings == 0  # never torn, never missing, across every swap
    assert seen == sorted(seen)
    assert seen[-1] == last
    assert source.polls > 10
