"""The kernel tables' sizes: the formula of README "Memory on big nodes", its setting, and
what a 128-CPU, 110-pod node pays for podnet_stats."""

from __future__ import annotations

import ctypes

import pytest

from otel_podnet import abi
from otel_podnet.capacity import Capacity
from otel_podnet.cli import main
from otel_podnet.settings import ConfigError, parse_max_pods


def test_formula_for_the_default_node() -> None:
    assert Capacity.for_pods(110) == Capacity(slots=505, cgroups=9952, pod_ips=456, peer_rows=1008)
    assert Capacity.for_pods(1) == Capacity(slots=69, cgroups=8208, pod_ips=20, peer_rows=136)


def test_peer_rows_memory_of_a_128_cpu_110_pod_node() -> None:
    row = ctypes.sizeof(abi.PodnetPeerCounters)  # 72 bytes: bytes x2, opened x2, failed x5
    assert row == 72
    assert Capacity.for_pods(110).peer_bytes(128, row) == (505 + 1008) * 128 * 72 == 13_943_808


def test_stats_memory_of_a_128_cpu_110_pod_node() -> None:
    row = ctypes.sizeof(abi.PodnetCounters)  # 1,120 bytes: 192 of counters, 928 of histograms
    assert Capacity.for_pods(110).stats_bytes(128, row) == 505 * 128 * row
    assert Capacity(4096, 0, 0).stats_bytes(128, row) == 4096 * 128 * row  # the compile-time size
    if row == 1120:
        assert (505 * 128 * row, 4096 * 128 * row) == (72_396_800, 560 * 2**20)  # README's figures
    assert Capacity.for_pods(110).stats_bytes(128, row) < 256 * 2**20 * 3 // 10  # under 30% of the 256Mi limit
    assert Capacity(1, 0, 0).stats_bytes(3, 12) == 3 * 16  # each CPU's value rounded up to 8 bytes


def test_max_pods_from_option_env_default() -> None:
    assert parse_max_pods(None, {}) == 110
    assert parse_max_pods(None, {"PODNET_MAX_PODS": "250"}) == 250
    assert parse_max_pods("30", {"PODNET_MAX_PODS": "250"}) == 30


EXPECTED = "expected the node's maximum number of pods, 1 to 10000"


@pytest.mark.parametrize(
    ("cli", "env", "message"),
    [
        ("abc", {}, f"--max-pods 'abc': {EXPECTED}"),
        (None, {"PODNET_MAX_PODS": "0"}, f"PODNET_MAX_PODS '0': {EXPECTED}"),
        (None, {"PODNET_MAX_PODS": "-5"}, f"PODNET_MAX_PODS '-5': {EXPECTED}"),
        (None, {"PODNET_MAX_PODS": "10001"}, f"PODNET_MAX_PODS '10001': {EXPECTED}"),
    ],
)
def test_bad_max_pods_is_one_line(cli: str | None, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_max_pods(cli, env)
    assert str(err.value) == message


def test_bad_max_pods_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--max-pods", "lots"]) == 2
    assert capsys.readouterr().err == (
        "otel-podnet: --max-pods 'lots': expected the node's maximum number of pods, 1 to 10000\n"
    )
