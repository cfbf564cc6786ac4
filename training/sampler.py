"""Task-uniform sampling (paper §III-B; docs/paper.md §2.3): pick a task uniformly, then an image uniformly in it.

Each draw has probability 1/(T * n_i) for an image of task i (with replacement), so every task
weighs the same whatever its size. The stream is a pure function of ``(seed, rank, position)``:
it is cut in chunks, each generated from its own seed, so a resumed run jumps straight to its
position, and each rank of a distributed run reads its own stream. Every draw also carries a
seed for its augmentation, so the images do not depend on the number of DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ['TaskUniformSampler', 'task_uniform_weights']

_CHUNK = 4096


def task_uniform_weights(task_sizes: Sequence[int]) -> np.ndarray:
    """The per-image weights 1/(T * n_i), concatenated task by task (sum to 1)."""
    T = len(task_sizes)
    return np.concatenate([np.full(n, 1.0 / (T * n)) for n in task_sizes])


class TaskUniformSampler(Sampler):
    """Yields ``(flat_index, augmentation_seed)`` pairs; flat indices run over the tasks in order.

    Args:
        task_sizes: number of images per task.
        seed: the run's seed.
        rank, world_size: the stream of this process (distinct per rank).
        num_draws: how many draws one pass yields (``None``: endless).
    """

    def __init__(
        self,
        task_sizes: Sequence[int],
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_draws: int | None = None,
    ):
        if not task_sizes or min(task_sizes) <= 0:
            raise ValueError(f'every task needs at least one image, got sizes {list(task_sizes)}')
        self.task_sizes = np.asarray(task_sizes, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.task_sizes)[:-1]])
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_draws = num_draws
        self.position = 0  # draws already consumed (set by the loop / load_state_dict)

    def chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws ``[c * CHUNK, (c + 1) * CHUNK)`` of this rank's stream: (flat index, task, aug seed)."""
        rng = np.random.default_rng([self.seed, self.rank, c, 0x6D746470])
        tasks = rng.integers(0, len(self.task_sizes), _CHUNK)
        within = np.floor(rng.random(_CHUNK) * self.task_sizes[tasks]).astype(np.int64)
        aug = rng.integers(0, 2**62, _CHUNK, dtype=np.int64)
        return self.offsets[tasks] + within, tasks, aug

    def draws(self, start: int, count: int) -> Iterator[tuple[int, int]]:
        pos, end = start, start + count
        while pos < end:
            c, off = divmod(pos, _CHUNK)
            idx, _, aug = self.chunk(c)
            stop = min(_CHUNK, off + end - pos)
            for i in range(off, stop):
                yield int(idx[i]), int(aug[i])
            pos += stop - off

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.num_draws is None:
            pos = self.position
            while True:
                yield from self.draws(pos, _CHUNK)
                pos += _CHUNK
        yield from self.draws(self.position, max(0, self.num_draws - self.position))

    def __len__(self) -> int:
        if self.num_draws is None:
            raise TypeError('an endless TaskUniformSampler has no length')
        return max(0, self.num_draws - self.position)

    def state_dict(self) -> dict:
        return {
            'seed': self.seed,
            'rank': self.rank,
            'world_size': self.world_size,
            'position': self.position,
            'task_sizes': self.task_sizes.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if list(state['task_sizes']) != self.task_sizes.tolist():
            raise ValueError(
                f'the pool changed since the checkpoint: task sizes {state["task_sizes"]} '
                f'then, {self.task_sizes.tolist()} now'
            )
        if (state['seed'], state['world_size']) != (self.seed, self.world_size):
            raise ValueError(
                f'cannot resume a stream of seed {state["seed"]} / {state["world_size"]} ranks with '
                f'seed {self.seed} / {self.world_size} ranks'
            )
        self.position = int(state['position'])
