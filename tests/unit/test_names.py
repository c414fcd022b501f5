"""Job ids, Kubernetes and Vertex names, experiment group and repository names."""

from __future__ import annotations

import itertools
import random
import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caliban.core.labels import VALUE_RE
from caliban.core.names import (
    JOB_ID_LENGTH,
    SHORT_ID_LENGTH,
    JobIdFactory,
    _encode,
    default_xgroup_name,
    dns1123_name,
    docker_repo_name,
    is_job_id,
    job_id_time,
    k8s_job_name,
    new_job_id,
    short_id,
    vertex_display_name,
)

DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DOCKER_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Caliban_Totoro", "caliban-totoro"),
        ("_foo", "job--foo"),
        ("foo_", "foo--0"),
        ("my job!", "my-job--0"),
        ("cifar10-test", "cifar10-test"),
        ("", "job"),
        ("a" * 80, "a" * 63),
    ],
)
def test_dns1123_cases(text: str, name: str) -> None:
    assert dns1123_name(text) == name


@given(st.text())
def test_dns1123_is_valid_and_idempotent(text: str) -> None:
    name = dns1123_name(text)
    assert DNS1123.fullmatch(name), name
    assert dns1123_name(name) == name


def test_job_ids_are_unique_sorted_and_valid() -> None:
    ids = [new_job_id() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for job_id in ids[:50]:
        assert len(job_id) == JOB_ID_LENGTH
        assert is_job_id(job_id)
        assert VALUE_RE.fullmatch(job_id)
        assert DNS1123.fullmatch(job_id)


@given(st.integers(min_value=0, max_value=2**140), st.integers(min_value=0, max_value=28))
def test_ids_are_written_in_crockford_base32_digit_by_digit(number: int, length: int) -> None:
    digits = "0123456789abcdefghjkmnpqrstvwxyz"
    expected = "".join(digits[(number >> (5 * i)) & 31] for i in reversed(range(length)))
    assert _encode(number, length) == expected


def test_job_ids_increase_within_a_millisecond_and_when_the_clock_steps_back() -> None:
    clock = iter([1000, 1000, 1000, 999, 2000])
    make = JobIdFactory(clock_ms=lambda: next(clock), random_bits=lambda n: 5)
    ids = [make() for _ in range(5)]
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert job_id_time(ids[0]) == datetime.fromtimestamp(1, tz=timezone.utc)
    assert job_id_time(ids[4]) == datetime.fromtimestamp(2, tz=timezone.utc)


def test_ids_of_one_burst_differ_early_in_their_short_id() -> None:
    rng = random.Random(4)
    make = JobIdFactory(clock_ms=lambda: 1000, random_bits=rng.getrandbits)
    ids = [make() for _ in range(200)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    shorts = [short_id(i) for i in ids]
    assert all(len(s) == SHORT_ID_LENGTH for s in shorts)
    assert all(i.endswith(s) for i, s in zip(ids, shorts, strict=True))
    assert len(set(shorts)) == len(shorts)
    # Drawn afresh, not counted up: consecutive ones differ in their first character
    # almost always (1 in 32 by chance), not only in the last one.
    differ_first = sum(a[0] != b[0] for a, b in itertools.pairwise(shorts))
    assert differ_first > len(shorts) * 0.8


def test_a_burst_whose_counter_runs_out_borrows_the_next_millisecond() -> None:
    top = (1 << 80) - 1
    make = JobIdFactory(clock_ms=lambda: 1000, random_bits=lambda n: top if n == 80 else 3)
    first, second = make(), make()
    assert second > first
    assert job_id_time(second) > job_id_time(first)
    assert short_id(second) == "00000003"


def test_job_id_time_is_now() -> None:
    made = job_id_time(new_job_id())
    assert abs(made - datetime.now(tz=timezone.utc)) < timedelta(seconds=5)
    with pytest.raises(ValueError, match="not a caliban job id"):
        job_id_time("not-an-id")


@given(st.text(max_size=100))
def test_k8s_job_name_keeps_the_job_id_whole(prefix: str) -> None:
    job_id = "01hzzzzzzzzzzzzzzzzzzzzzzz"
    name = k8s_job_name(prefix, job_id)
    assert DNS1123.fullmatch(name) and len(name) <= 63
    assert name.endswith("-" + job_id)
    assert name == k8s_job_name(prefix, job_id)


def test_k8s_job_name_examples() -> None:
    job_id = new_job_id()
    assert k8s_job_name("Caliban_Totoro", job_id) == f"caliban-totoro-{job_id}"
    assert k8s_job_name("x" * 100, job_id) == "x" * 36 + "-" + job_id
    with pytest.raises(ValueError, match="cannot be part"):
        k8s_job_name("a", "Not_An_Id")


def test_vertex_display_name() -> None:
    assert vertex_display_name("caliban_me", 3) == "caliban_me_3"
    long = vertex_display_name("n" * 300, 12)
    assert len(long) == 128 and long.endswith("_12")
    assert vertex_display_name("a\nb", 1) == "a_b_1"


def test_default_xgroup_name() -> None:
    when = datetime(2024, 1, 2, 3, 4, 5)
    assert default_xgroup_name("totoro", when) == "totoro-xgroup-2024-01-02-03-04-05"


@pytest.mark.parametrize(
    ("folder", "repo"),
    [
        ("My Project", "my-project"),
        ("my_project", "my_project"),
        ("a__b", "a__b"),
        ("a___b", "a-b"),
        ("a..b", "a-b"),
        ("--x--", "x"),
        ("Über", "ber"),
        ("!!!", "caliban-project"),
    ],
)
def test_docker_repo_name(folder: str, repo: str) -> None:
    assert docker_repo_name(folder) == repo


@given(st.text())
def test_docker_repo_name_is_valid(folder: str) -> None:
    assert DOCKER_COMPONENT.fullmatch(docker_repo_name(folder))
