"""The measurement helpers the cost benchmarks share (ganaug.benchmark)."""

from __future__ import annotations

import math

import pytest
import torch

from ganaug.benchmark import fastest_run, peak_bytes, ratio_of_totals, rotated

CPU = torch.device("cpu")


def test_rotated_starts_each_round_at_another_variant():
    names = ["baseline", "pgan", "asdn"]
    assert [rotated(names, r) for r in range(4)] == [
        ["baseline", "pgan", "asdn"],
        ["pgan", "asdn", "baseline"],
        ["asdn", "baseline", "pgan"],
        ["baseline", "pgan", "asdn"],
    ]
    assert rotated({"a": 1, "b": 2}, 1) == ["b", "a"]  # a dict's keys, like the benches pass


def test_fastest_run_calls_repeats_times_and_keeps_the_minimum():
    calls = []
    wall, cpu = fastest_run(lambda: calls.append(sum(range(10_000))), repeats=3, device=CPU)
    assert len(calls) == 3 and 0.0 <= wall < 1.0 and 0.0 <= cpu < 1.0
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        fastest_run(lambda: None, repeats=0, device=CPU)


def test_ratio_of_totals():
    assert ratio_of_totals([2.0, 4.0], [1.0, 2.0]) == pytest.approx(2.0)
    assert math.isnan(ratio_of_totals([], [1.0]))


def test_peak_bytes_counts_what_the_call_allocates_not_what_lived_before():
    before = torch.ones(2**20)  # 4 MiB alive before the call: not counted
    mib = 2**20

    def fn():
        a = torch.ones(2 * 2**18)  # 2 MiB
        b = torch.ones(2**18)  # 1 MiB, while a is alive: peak 3 MiB
        del a, b

    breakdown = []
    peak = peak_bytes(fn, CPU, breakdown)
    assert 3 * mib <= peak < 3 * mib + 64 * 1024
    assert breakdown and breakdown[0][0] == pytest.approx(peak / mib, rel=0.05)
    assert before.numel() == 2**20
