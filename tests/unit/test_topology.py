"""CPU/NUMA affinity from `nvidia-smi topo -m`, and how cores are chosen."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from caliban.core import topology
from caliban.core.topology import GpuAffinity, choose, format_cpu_list, parse_cpu_list

SAMPLES = Path(__file__).parent.parent / "fixtures" / "nvidia_smi"


def _sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def test_cpu_lists_round_trip() -> None:
    assert parse_cpu_list("0-3,8,10-11") == (0, 1, 2, 3, 8, 10, 11)
    assert parse_cpu_list(" 5 , 1-2,") == (1, 2, 5)
    assert format_cpu_list([11, 10, 8, 3, 2, 1, 0]) == "0-3,8,10-11"
    assert format_cpu_list([4]) == "4"
    assert format_cpu_list([]) == ""
    for bad in ("a", "3-1", "1-", "-2"):
        with pytest.raises(ValueError):
            parse_cpu_list(bad)


def test_dgx1_two_sockets_without_a_numa_column() -> None:
    found = topology.parse_topology(_sample("topo_dgx1_v100.txt"))
    assert sorted(found) == [str(i) for i in range(8)]  # NIC rows are not GPUs
    socket0 = frozenset([*range(0, 20), *range(40, 60)])
    socket1 = frozenset([*range(20, 40), *range(60, 80)])
    assert {found[str(i)] for i in range(4)} == {GpuAffinity(socket0, None)}
    assert {found[str(i)] for i in range(4, 8)} == {GpuAffinity(socket1, None)}


def test_dgx_a100_eight_numa_nodes_with_escape_codes_and_gpu_numa_id() -> None:
    found = topology.parse_topology(_sample("topo_dgx_a100.txt"))
    assert [found[str(i)].numa for i in range(8)] == [3, 3, 1, 1, 7, 7, 5, 5]
    assert found["0"].cpus == frozenset([*range(48, 64), *range(176, 192)])
    assert found["7"].cpus == frozenset([*range(80, 96), *range(208, 224)])


def test_one_socket_box() -> None:
    found = topology.parse_topology(_sample("topo_one_socket.txt"))
    assert found == {
        "0": GpuAffinity(frozenset(range(12)), 0),
        "1": GpuAffinity(frozenset(range(12)), 0),
    }


def test_space_separated_copy_and_na_cells() -> None:
    text = (
        "        GPU0    GPU1    CPU Affinity    NUMA Affinity\n"
        "GPU0     X      SYS     0-3             N/A\n"
        "GPU1    SYS      X      N/A             N/A\n"
    )
    found = topology.parse_topology(text)
    assert found == {"0": GpuAffinity(frozenset(range(4))), "1": GpuAffinity(frozenset())}


@pytest.mark.parametrize("text", ["", "GPU0 X\n", "\tGPU0\tCPU Affinity\n", "no table here"])
def test_text_without_an_affinity_table_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        topology.parse_topology(text)


def _two_socket_64() -> dict[str, GpuAffinity]:
    # 8 GPUs, 2 sockets of 32 cores: GPUs 0-3 near 0-31 (node 0), 4-7 near 32-63 (node 1).
    low = GpuAffinity(frozenset(range(32)), 0)
    high = GpuAffinity(frozenset(range(32, 64)), 1)
    return {str(i): (low if i < 4 else high) for i in range(8)}


def test_gpus_and_cores_come_from_one_socket_when_they_can() -> None:
    aff = _two_socket_64()
    gpus = [str(i) for i in range(8)]
    got = choose(gpus, 2, range(64), 8, aff)
    assert got == topology.Choice(("0", "1"), tuple(range(8)), 0)
    # Socket 0 has GPUs left but only 4 free cores: the job moves to socket 1.
    got = choose(["2", "3", "4", "5"], 1, [*range(28, 32), *range(32, 64)], 8, aff)
    assert got is not None and got.gpus == ("4",) and set(got.cpus) <= set(range(32, 64))
    assert got.numa == 1


def test_no_single_socket_fits_then_nearest_cores_first() -> None:
    aff = _two_socket_64()
    got = choose(["3", "4"], 2, [31, 32, 33, 0], 3, aff)
    assert got is not None and got.gpus == ("3", "4") and got.numa is None
    assert got.cpus == (0, 31, 32)


def test_packed_without_topology_or_gpus() -> None:
    assert choose([], 0, [7, 2, 5, 3], 2) == topology.Choice((), (2, 3))
    assert choose(["0", "1"], 1, [9, 4], 1) == topology.Choice(("0",), (4,))
    assert choose(["0"], 2, range(8), 1) is None
    assert choose(["0"], 1, [1], 2) is None


def test_a_thousand_random_allocations_never_share_and_never_refuse_what_fits() -> None:
    """The allocator at scale: 64 cores, 8 GPUs, jobs coming and going at random."""
    rng = random.Random(16)
    aff = _two_socket_64()
    free_g = [str(i) for i in range(8)]
    free_c = set(range(64))
    running: list[topology.Choice] = []
    local = 0
    for _ in range(1000):
        if running and rng.random() < 0.45:
            done = running.pop(rng.randrange(len(running)))
            free_g = sorted({*free_g, *done.gpus}, key=int)
            free_c |= set(done.cpus)
            continue
        g, c = rng.choice([1, 2, 4]), rng.choice([1, 4, 8, 16])
        got = choose(free_g, g, free_c, c, aff)
        fits = len(free_g) >= g and len(free_c) >= c
        assert (got is not None) == fits
        if got is None:
            continue
        assert len(got.gpus) == g and len(set(got.cpus)) == c
        assert set(got.gpus) <= set(free_g) and set(got.cpus) <= free_c
        if got.numa is not None:
            local += 1
            assert all(set(got.cpus) <= aff[x].cpus for x in got.gpus)
        free_g = [x for x in free_g if x not in got.gpus]
        free_c -= set(got.cpus)
        running.append(got)
        held_c = [c for r in running for c in r.cpus]
        held_g = [x for r in running for x in r.gpus]
        assert len(held_c) == len(set(held_c)) and len(held_g) == len(set(held_g))
    assert local > 0  # the socket-local path was taken, not only the fallback
