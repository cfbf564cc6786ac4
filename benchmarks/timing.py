"""Interleaved timing: variants A, B, A, B, ... in one process, medians of per-round rates.

Interleaving makes a slow spell of a shared machine hit every variant alike, so the ratios hold
even when the absolute figures drift. Rounds should be short (a step or two) so that bursts of
load from other processes land on few rounds; :func:`ratios` gives the robust ratios.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def interleaved_rates(
    variants: dict[str, Callable[[], int]],
    rounds: int,
    warmup: int = 1,
    device: torch.device | str | None = None,
    deadline: float | None = None,
) -> dict[str, dict]:
    """Run each variant ``warmup`` times, then ``rounds`` times in turn; per-round items/s.

    A variant returns the number of items (images) it processed. Returns, per variant, the
    median, min and max rate and the per-round rates. ``deadline`` (``time.perf_counter()``
    value) stops after the round in progress, with at least one timed round per variant.
    """
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            sync(device)
            start = time.perf_counter()
            n = fn()
            sync(device)
            rates[name].append(n / (time.perf_counter() - start))
        if deadline is not None and time.perf_counter() > deadline:
            break
    return {
        name: {
            'median': statistics.median(v),
            'min': min(v),
            'max': max(v),
            'rounds': len(v),
            'per_round': [round(x, 2) for x in v],
        }
        for name, v in rates.items()
    }


def ratios(rates: dict[str, dict], a: str, b: str) -> dict[str, float]:
    """``a`` over ``b`` three ways: median of the per-round ratios (the headline: each round's pair ran
    back to back, so a burst of load from other processes that spans the pair cancels), ratio of
    the medians, and ratio of the best rounds (the least disturbed run of each)."""
    paired = [x / y for x, y in zip(rates[a]['per_round'], rates[b]['per_round'])]
    return {
        'ratio': round(statistics.median(paired), 4),
        'ratio_of_medians': round(rates[a]['median'] / rates[b]['median'], 4),
        'ratio_of_best': round(rates[a]['max'] / rates[b]['max'], 4),
    }
