"""Guards that stop a run on corrupted numbers and name the images of the batch at fault.

Training images reach the device as uint8 and are normalised there, so a network input cannot be
NaN or infinite unless memory was overwritten after the normalisation (a driver or decoder
writing into memory that queued kernels still read). Such a corruption does not raise: it
poisons the loss or, during BN re-calibration, every BN statistic, far from its cause. Two guards:

- :class:`InputWatch` flags non-finite training inputs per sample on the device, with no host
  sync per step (as :class:`training.step.LossWatch` does for the loss), and the loop checks it
  when it syncs anyway (``log_every``, checkpoints, the end).
- :func:`checked_recalibration_batches` checks each BN re-calibration batch (inputs, and every BN
  layer's input through forward pre-hooks) before the next one is drawn, so the statistics are
  never written from a bad batch.

Both raise :class:`NonFiniteBatchError` naming the images (task, split, file) of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from mtdp_hub.errors import MtdpError

from .recipe import bn_layers

__all__ = [
    'NonFiniteBatchError',
    'FirstBad',
    'InputWatch',
    'checked_recalibration_batches',
    'finite_per_sample',
]


class NonFiniteBatchError(MtdpError, RuntimeError):
    """A batch held NaN/inf inputs or produced NaN/inf activations; the message names its images."""


def finite_per_sample(x: torch.Tensor) -> torch.Tensor:
    """A bool per sample of an NCHW float batch: all its values finite (one reduction, on the device).

    A sum is finite exactly when its terms are (NaN and inf propagate; normalised pixels cannot
    overflow float32), which reads the batch once in whatever memory format it has.
    """
    return torch.isfinite(x.sum(dim=tuple(range(1, x.dim())), dtype=torch.float32))


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = '\n  '.join(names[:limit])
    more = f'\n  ... and {len(names) - limit} more' if len(names) > limit else ''
    return f'\n  {shown}{more}'


class FirstBad:
    """The first iteration a per-step flag was raised, with what came with it, latched on the device.

    ``record`` costs a few elementwise kernels and no host sync; ``read`` syncs once. Used by
    :class:`InputWatch` and :class:`training.step.LossWatch`.
    """

    def __init__(self, detail: torch.Tensor):
        self.iteration = torch.full((), -1, dtype=torch.long, device=detail.device)
        self.detail = detail

    def record(self, bad: torch.Tensor, detail: torch.Tensor, iteration: int) -> None:
        """Keep ``detail`` and ``iteration`` if ``bad`` (a 0-dim bool tensor) and nothing was kept yet."""
        newly_bad = bad & (self.iteration < 0)
        self.iteration = torch.where(newly_bad, torch.full_like(self.iteration, iteration), self.iteration)
        self.detail = torch.where(newly_bad, detail, self.detail)

    def read(self) -> int:
        """The iteration kept, -1 if none (syncs with the device)."""
        return int(self.iteration.item())


class InputWatch:
    """The first training batch with a non-finite input, kept on the device: no host sync per step.

    ``add`` records, for the first bad iteration only, which samples were bad; ``check`` (which
    syncs) raises naming their files, recovered from the draws of that iteration.
    """

    def __init__(self, batch_size: int, device: torch.device):
        self.first = FirstBad(torch.zeros(batch_size, dtype=torch.bool, device=device))

    def add(self, x: torch.Tensor, iteration: int) -> None:
        bad = ~finite_per_sample(x)
        self.first.record(bad.any(), bad, iteration)

    def check(self, any_rank: Callable[[bool], bool], draws_of: Callable[[int], list[str]]) -> None:
        """Raise :class:`NonFiniteBatchError` when any rank saw a non-finite input (syncs with the device).

        ``draws_of(iteration)`` gives the names of that iteration's images on this rank, in batch order.
        """
        bad_it = self.first.read()
        if not any_rank(bad_it >= 0):
            return
        if bad_it < 0:
            raise NonFiniteBatchError('non-finite network input on another rank; stopping (see its message)')
        names = draws_of(bad_it)
        bad = [names[k] for k in self.first.detail.nonzero().flatten().tolist()]
        raise NonFiniteBatchError(
            f'non-finite network input at iteration {bad_it} in {len(bad)} image(s); stopping before the '
            'weights take it in. Images arrive as uint8, so this is memory corruption on the device '
            f'(or a broken custom transform), not a property of the files:{_listing(bad)}'
        )


def checked_recalibration_batches(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    names: Sequence[Sequence[str]],
    any_rank: Callable[[bool], bool] = bool,
) -> Iterator[torch.Tensor]:
    """Yield ``batches`` (already on the device) to ``recalibrate_batchnorm(model, ...)``, checking each.

    Before a batch is handed over its inputs are checked; once the model has run it (when the next
    batch is asked for, or at the end, before the statistics are written) every BN layer's input
    is checked through forward pre-hooks. A bad batch raises :class:`NonFiniteBatchError` naming
    ``names[k]``, its images, and the re-calibration stops with the model untouched. Two host syncs
    per batch (re-calibration runs a few dozen batches, once); ``any_rank`` ORs a flag over the
    ranks, so that every rank stops at the same batch.
    """
    recalibrated = set(bn_layers(model))
    layers = {m: name for name, m in model.named_modules() if m in recalibrated}
    layer_ok: dict[str, torch.Tensor] = {}  # per BN layer: all its inputs finite in this batch

    def hook(module, inputs):
        ok = torch.isfinite(inputs[0].detach().sum(dtype=torch.float32))
        layer_ok[layers[module]] = layer_ok[layers[module]] & ok if layers[module] in layer_ok else ok

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    try:
        for k, x in enumerate(batches):
            bad = (~finite_per_sample(x)).nonzero().flatten().tolist()
            if any_rank(bool(bad)):
                where = f'in {len(bad)} image(s)' if bad else 'on another rank'
                raise NonFiniteBatchError(
                    f'BN re-calibration batch {k + 1}: non-finite network input {where}; nothing was '
                    f'changed in the model{":" + _listing([names[k][j] for j in bad]) if bad else ""}'
                )
            layer_ok.clear()
            yield x
            oks = torch.stack(list(layer_ok.values())).tolist() if layer_ok else []  # one sync
            broken = [name for name, ok in zip(layer_ok, oks) if not ok]
            if any_rank(bool(broken)):
                where = (
                    f'at {", ".join(broken[:5])}{" ..." if len(broken) > 5 else ""}'
                    if broken
                    else 'on another rank'
                )
                raise NonFiniteBatchError(
                    f'BN re-calibration batch {k + 1}: finite inputs gave non-finite activations {where} '
                    '(memory overwritten on the device while the batch ran?); nothing was changed in '
                    f'the model. The batch held on this rank:{_listing(list(names[k]))}'
                )
    finally:
        for h in handles:
            h.remove()
