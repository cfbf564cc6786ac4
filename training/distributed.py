"""torchrun environment -> process group. One process per device; NCCL on GPU, gloo on CPU.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous for multi-node runs);
without them the run is a single process. Nothing here patches ``print``: the loop asks
:attr:`Dist.is_main` before writing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ['Dist', 'setup', 'teardown']


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            if self.device.type == 'cuda':
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is True on any rank (a collective: call on all ranks)."""
        if not self.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def setup(device: str = 'auto') -> Dist:
    """Read torchrun's environment, pick the device, start the process group when there are ranks."""
    rank = int(os.environ.get('RANK', 0))
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = device == 'cuda' or (device == 'auto' and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise RuntimeError('run.device=cuda but no CUDA device is available')
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
    if world_size > 1 and not dist.is_initialized():
        # torchrun's store outlives an elastic restart: without a per-attempt prefix, a restarted
        # rank can read the previous attempt's addresses and fail to connect (seen with gloo).
        timeout = timedelta(minutes=30)
        store, _, _ = next(dist.rendezvous('env://', rank, world_size, timeout=timeout))
        attempt = os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')
        dist.init_process_group(
            backend='nccl' if use_cuda else 'gloo',
            store=dist.PrefixStore(f'/mtdp/attempt_{attempt}', store),
            rank=rank,
            world_size=world_size,
            timeout=timeout,
            **({'device_id': dev} if use_cuda else {}),
        )
    return Dist(rank, world_size, local_rank, dev)


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()
