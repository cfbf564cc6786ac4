"""Where and in what precision models run: the one device choice and precision policy.

Used by extraction, evaluation (fine-tuning) and the training driver alike, so ``'auto'`` means
the same everywhere: bf16 autocast on a CUDA device that supports it (fp16 on older cards, with
a gradient scaler when training), float32 on the CPU (where bf16 is emulated and slow).
``'fp32'`` (alias ``'none'``) turns autocast off.
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import InvalidOptionError

__all__ = [
    'PRECISIONS',
    'pick_device',
    'autocast_dtype',
    'precision_name',
    'autocast',
    'grad_scaler',
    'optimizer_step',
    'available_cpus',
    'cpu_share',
    'loader_workers',
]

PRECISIONS = ('auto', 'fp32', 'bf16', 'fp16')
_DTYPES = {'fp32': None, 'none': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``'auto'`` / ``None``: the first CUDA device when there is one, else the CPU."""
    if device in (None, 'auto'):
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means float32 (no autocast)."""
    if precision == 'auto':
        if device.type != 'cuda':
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision not in _DTYPES:
        raise InvalidOptionError(f'precision must be one of {", ".join(PRECISIONS)}, not {precision!r}')
    return _DTYPES[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    """``'bf16'``, ``'fp16'`` or ``'float32'`` (as recorded in provenance)."""
    return {torch.bfloat16: 'bfloat16', torch.float16: 'float16'}.get(dtype, 'float32')


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype``, or a no-op context for float32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler that is active only for fp16 (bf16 and fp32 need none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    """Backward and update: zero grads, (scaled) backward, step (skipped by the scaler on inf/NaN
    gradients), scaler update."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity set, e.g. a Slurm or container share), not the
    machine's count."""
    if hasattr(os, 'sched_getaffinity'):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_share() -> int:
    """The CPUs of :func:`available_cpus` that fall to this process when ``torchrun`` started
    ``LOCAL_WORLD_SIZE`` ranks on this machine: they share its cores, DataLoader workers included."""
    local_ranks = max(1, int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1))
    return max(1, available_cpus() // local_ranks)


def loader_workers(device: torch.device, requested: int | None = None) -> int:
    """DataLoader workers for inference on ``device``, never more than this rank's :func:`cpu_share`.

    Default on CUDA: every available CPU but one (the main process feeds the device), at most 16:
    decoding and resizing JPEGs is what limits a GPU pipeline. On the CPU the model's forward
    shares the cores with the workers and dominates, so half of them, at most 8.
    """
    cpus = cpu_share()
    if requested is not None:
        if requested < 0:
            raise InvalidOptionError(f'the number of workers must be 0 or more, not {requested}')
        return min(requested, cpus)
    if device.type == 'cuda':
        return max(1, min(16, cpus - 1))
    return max(1, min(8, cpus // 2))
