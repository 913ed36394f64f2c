"""Measurement helpers shared by the cost benchmarks under ``tools/``.

The benchmarks compare variants in one run, on the same batches: rounds are interleaved
(round r runs every variant on batch r), each round starts at a different variant
(:func:`rotated`), each variant runs several times per batch and keeps the fastest
(:func:`fastest_run`), and ratios are totals over the rounds (:func:`ratio_of_totals`).
Peak memory is that of tensors allocated during one call (:func:`peak_bytes`).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence

import torch

__all__ = ["fastest_run", "peak_bytes", "ratio_of_totals", "rotated", "sync"]


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work (a no-op on CPU), so that timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rotated(names: Sequence[str], r: int) -> list[str]:
    """``names`` starting at position ``r % len(names)``: the order of round ``r``.

    Whatever the position in a round costs (caches, the allocator after another model's
    step) then falls on every variant alike.
    """
    names = list(names)
    if not names:
        return names
    k = r % len(names)
    return names[k:] + names[:k]


def fastest_run(fn: Callable[[], object], *, repeats: int, device: torch.device):
    """``(wall s, process CPU s)`` of the fastest of ``repeats`` calls of ``fn``.

    Other work on the machine and OpenMP's spinning only ever add time, so the minimum is
    the least disturbed measurement.
    """
    if repeats < 1:
        raise ValueError(f"fastest_run: repeats must be >= 1, got {repeats}")
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        best_wall = min(best_wall, time.perf_counter() - t0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu


def ratio_of_totals(values: Sequence[float], base: Sequence[float]) -> float:
    """``sum(values) / sum(base)`` (the same batches for both); NaN when empty."""
    if not values or not base:
        return float("nan")
    return sum(values) / sum(base)


def peak_bytes(fn: Callable[[], object], device: torch.device, breakdown: list | None = None):
    """Peak of tensor bytes allocated *during* ``fn`` (not those live before it).

    CUDA: ``max_memory_allocated`` above what was allocated before. CPU: the profiler's
    allocation events (not the process RSS). With ``breakdown`` (a list, CPU only), appends
    the six ATen ops with the highest live memory while they ran, as ``(peak MB, live MB
    before the op, op name, input shapes)``: where the peak is reached and what the op adds.
    """
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base

    from torch.profiler import ProfilerActivity, profile

    with profile(
        activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=breakdown is not None
    ) as prof:
        fn()
    kineto = list(prof.profiler.kineto_results.events())
    events = sorted((e.start_ns(), e.nbytes()) for e in kineto if e.name() == "[memory]")
    live = peak = 0
    times, lives = [], []
    for t, nbytes in events:
        live += nbytes
        peak = max(peak, live)
        times.append(t)
        lives.append(live)
    if breakdown is not None and times:
        rows = []
        for e in kineto:
            name = e.name()
            if name == "[memory]" or not e.duration_ns():
                continue
            a = bisect.bisect_left(times, e.start_ns())
            b = bisect.bisect_right(times, e.start_ns() + e.duration_ns())
            before = lives[a - 1] if a else 0
            top = max(lives[a:b], default=before)
            rows.append((top / 2**20, before / 2**20, e.duration_ns(), name, str(e.shapes()[:3])))
        # Highest peak first; among ops spanning the same peak, the innermost first.
        rows.sort(key=lambda r: (-r[0], r[2]))
        # Nested ops repeat the same peak: keep the first of each.
        seen = set()
        for top, before, _, name, shapes in rows:
            key = (round(top, 2), name)
            if key not in seen:
                seen.add(key)
                breakdown.append((top, before, name, shapes))
            if len(breakdown) == 6:
                break
    return peak
