"""Task-uniform sampling: frequencies 1/(T*n_i), determinism, per-rank streams, resume position."""

from __future__ import annotations

import itertools

import numpy as np

from training.sampler import TaskUniformSampler, task_uniform_weights

SIZES = [5, 50, 500]


def test_weights_are_one_over_T_n_i():
    w = task_uniform_weights(SIZES)
    assert np.isclose(w.sum(), 1.0)
    assert np.allclose(w[:5], 1 / (3 * 5)) and np.allclose(w[-500:], 1 / (3 * 500))


def test_draw_frequencies_are_task_uniform_then_image_uniform():
    s = TaskUniformSampler(SIZES, seed=1, num_draws=60_000)
    idx = np.array([i for i, _ in s])
    offsets = np.cumsum([0] + SIZES)
    per_task = np.array([((idx >= offsets[k]) & (idx < offsets[k + 1])).sum() for k in range(3)])
    assert np.allclose(per_task / len(idx), 1 / 3, atol=0.01)  # each task ~1/3 whatever its size
    small = np.bincount(idx[idx < 5], minlength=5) / len(idx)
    assert np.allclose(small, 1 / (3 * 5), atol=0.01)  # an image of the small task: 1/15
    big = np.bincount(idx[idx >= 55] - 55, minlength=500)
    assert big.min() > 0 and np.isclose(
        big.mean() / len(idx), 1 / 1500, rtol=0.02
    )  # with replacement, all reached


def test_stream_is_deterministic_per_seed_and_distinct_per_rank():
    def draws(**kw):
        return list(TaskUniformSampler(SIZES, num_draws=1000, **kw))

    assert draws(seed=3) == draws(seed=3)
    assert draws(seed=3) != draws(seed=4)
    r0, r1 = draws(seed=3, rank=0, world_size=2), draws(seed=3, rank=1, world_size=2)
    assert r0 != r1 and len({a for a, _ in r0[:50]} & {a for a, _ in r1[:50]}) < 50
    assert len({seed for _, seed in r0}) == 1000  # every draw has its own augmentation seed


def test_resume_position_continues_the_same_stream():
    full = list(TaskUniformSampler(SIZES, seed=5, num_draws=10_000))
    resumed = TaskUniformSampler(SIZES, seed=5, num_draws=10_000)
    first = TaskUniformSampler(SIZES, seed=5, num_draws=10_000)
    first.position = 4321  # what the loop records: iterations done x batch size
    resumed.load_state_dict(first.state_dict())
    assert len(resumed) == 10_000 - 4321
    assert list(resumed) == full[4321:]


def test_endless_stream_matches_finite_prefix():
    endless = TaskUniformSampler(SIZES, seed=2)
    assert list(itertools.islice(iter(endless), 9000)) == list(
        TaskUniformSampler(SIZES, seed=2, num_draws=9000)
    )
