"""The marker recorded on every database we create."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_concurrent_db.backends.base import MARKER_TAG, Marker

fast = settings(database=None, deadline=None, max_examples=100)

markers = st.builds(
    Marker,
    kind=st.sampled_from(["template", "clone"]),
    run_id=st.text(max_size=20),
    worker_id=st.text(max_size=20),
    template=st.text(max_size=70),
    fingerprint=st.text("0123456789abcdef", max_size=64),
    state=st.sampled_from(["building", "ready"]),
    created=st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False),
    host=st.text(max_size=30),
    pid=st.integers(min_value=0, max_value=2**31),
)


@fast
@given(marker=markers)
def test_encode_decode_roundtrip(marker: Marker) -> None:
    text = marker.encode()
    assert text.startswith(MARKER_TAG)
    assert "\n" not in text
    assert text.isascii()
    assert Marker.decode(text) == marker


def test_encoding_is_deterministic_and_tagged() -> None:
    marker = Marker(kind="clone", run_id="1f2e3d4c", worker_id="gw0", template="cdb_app_tpl_x", created=1.5, pid=42)
    assert MARKER_TAG == "pytest-concurrent-db:v1 "
    assert marker.encode() == (
        'pytest-concurrent-db:v1 {"created":1.5,"fingerprint":"","host":"","kind":"clone","pid":42,'
        '"run_id":"1f2e3d4c","state":"ready","template":"cdb_app_tpl_x","worker_id":"gw0"}'
    )


def test_defaults() -> None:
    before = time.time()
    marker = Marker(kind="template", run_id="r")
    assert before <= marker.created <= time.time()
    assert (marker.worker_id, marker.template, marker.fingerprint, marker.state, marker.host, marker.pid) == (
        "",
        "",
        "",
        "ready",
        "",
        0,
    )


VALID = json.dumps({"kind": "clone", "run_id": "r"})


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "hello",
        "A database of the billing team",
        VALID,
        "pytest-concurrent-db:v1",
        "pytest-concurrent-db:v1 ",
        "pytest-concurrent-db:v1" + VALID,
        "pytest-concurrent-db:v2 " + VALID,
        " pytest-concurrent-db:v1 " + VALID,
        "PYTEST-CONCURRENT-DB:V1 " + VALID,
        "pytest-concurrent-db:v1 not json",
        "pytest-concurrent-db:v1 {",
        "pytest-concurrent-db:v1 " + VALID[:-3],
        "pytest-concurrent-db:v1 null",
        "pytest-concurrent-db:v1 []",
        "pytest-concurrent-db:v1 42",
        'pytest-concurrent-db:v1 "clone"',
        'pytest-concurrent-db:v1 {"kind": "clone"}',
        'pytest-concurrent-db:v1 {"run_id": "r"}',
        'pytest-concurrent-db:v1 {"kind": "clone", "run_id": "r", "owner": "someone else"}',
        'pytest-concurrent-db:v1 {"kind": "clone", "run_id": "r"} trailing',
        "pytest-concurrent-db:v1 \x00\xff\ud800",
    ],
)
def test_decode_of_foreign_or_garbage_text_is_none(text: str | None) -> None:
    assert Marker.decode(text) is None


def test_decode_tolerates_missing_optional_fields() -> None:
    assert Marker.decode(MARKER_TAG + '{"kind": "clone", "run_id": "r", "created": 3}') == Marker(
        kind="clone", run_id="r", created=3
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
field_names = st.sampled_from([*Marker.__dataclass_fields__, "extra"])


@fast
@given(text=st.text(max_size=200), value=json_values | st.dictionaries(field_names, json_values))
def test_decode_never_raises(text: str, value: object) -> None:
    assert Marker.decode(text) is None or text.startswith(MARKER_TAG)
    decoded = Marker.decode(MARKER_TAG + json.dumps(value))
    assert decoded is None or isinstance(decoded, Marker)


def test_a_spares_pristine_state_is_kept_and_other_markers_stay_as_they_were() -> None:
    plain = Marker(kind="spare", run_id="r", worker_id="gw0", created=1.0)
    assert "pristine" not in plain.encode()
    spare = Marker(kind="spare", run_id="r", worker_id="gw0", created=1.0, pristine='{"counters":{},"digest":"ab"}')
    assert '"pristine":' in spare.encode()
    assert Marker.decode(spare.encode()) == spare
    assert Marker.decode(plain.encode()) == plain
