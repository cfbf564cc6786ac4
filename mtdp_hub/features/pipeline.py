"""Batches in, features out, with the device never waiting for the host.

The design, for a CUDA device (the CPU path is the plain loop: every step runs on the host):

- DataLoader workers decode and resize/crop each image to **uint8** CHW
  (:attr:`FeatureExtractor.pixel_transform`): a quarter of float32's bytes through the worker
  queue, the pinned copy and the host-to-device transfer, and no float arithmetic on the cores
  that decode. The loader pins the batches (``pin_memory=True``) and keeps ``prefetch_factor``
  batches per worker ready (:func:`loader_settings`).
- Each batch is copied to the device on a side stream (``non_blocking``), so the copy of batch
  k+1 overlaps the forward of batch k; the compute stream waits on that copy only, and the input
  is ``record_stream``-ed so the caching allocator does not reuse it early.
- Normalisation (:class:`~mtdp_hub.features.pixels.Normalise`), the forward (autocast and
  channels_last as the precision policy of :mod:`.runtime` says) and the TTA average run on the
  compute stream; the float32 features stay on the device and are copied into a pinned host
  buffer with ``non_blocking``, then a CUDA event is recorded.
- :func:`stream_features` yields the features of batch k only once batch k + ``depth`` has been
  queued: it waits on batch k's event, which by then has usually fired. The host thus queues
  work ``depth`` batches ahead of the device, and nothing calls ``.cpu()``, ``.item()`` or
  ``synchronize()`` per batch. The consumer (the feature file writer, the finiteness check) works
  on host copies a few steps behind.

JPEG decoding stays on the CPU workers. torchvision's CUDA ``decode_jpeg`` is not used: its
batched nvJPEG decoder can write into caching-allocator blocks that queued kernels still read,
corrupting unrelated GPU memory, and the project removed it from training for that reason.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch

from .extractor import FeatureExtractor
from .runtime import loader_workers

__all__ = ['IN_FLIGHT', 'stream_features', 'loader_settings', 'default_batch_size']

IN_FLIGHT = 4  # batches queued on the device ahead of the one whose features are read back


def default_batch_size(device: torch.device) -> int:
    """256 on CUDA (per-batch host work, the launch of the forward's kernels included, stays small
    beside the device's time), 64 on the CPU."""
    return 256 if device.type == 'cuda' else 64


def loader_settings(device: torch.device, num_workers: int | None, batch_size: int | None = None) -> dict:
    """DataLoader arguments for inference on ``device``: the batch size (``None``:
    :func:`default_batch_size`), workers (:func:`.runtime.loader_workers`), pinned batches on CUDA,
    and enough prefetched batches that the workers' queue never runs dry."""
    workers = loader_workers(device, num_workers)
    return dict(
        batch_size=batch_size or default_batch_size(device),
        num_workers=workers,
        pin_memory=device.type == 'cuda',
        persistent_workers=False,
        prefetch_factor=(4 if workers < 8 else 2) if workers > 0 else None,
    )


def stream_features(
    extractor: FeatureExtractor,
    batches: Iterable[tuple[Any, torch.Tensor | None]],
    depth: int = IN_FLIGHT,
) -> Iterator[tuple[Any, np.ndarray | None]]:
    """``(tag, features)`` for each ``(tag, batch)`` of ``batches``, in order.

    ``batch`` is a uint8 (N, 3, H, W) batch (or a normalised float one, or ``None``: then the
    features are ``None`` and the tag still comes out in its turn); ``features`` is a float32
    (N, D) array the caller owns. On CUDA up to ``depth`` batches are in flight (module docstring).
    """
    if extractor.device.type != 'cuda':
        for tag, x in batches:
            yield tag, None if x is None else extractor(x).numpy()
        return
    yield from _cuda_stream(extractor, batches, max(1, depth))


def _cuda_stream(extractor: FeatureExtractor, batches, depth: int):
    device = extractor.device
    compute = torch.cuda.current_stream(device)
    copy = torch.cuda.Stream(device)
    pending: deque = deque()
    for tag, x in batches:
        if x is None:
            pending.append((tag, None, None))
        else:
            with torch.cuda.stream(copy):
                x_dev = x.to(device, non_blocking=True)
            compute.wait_stream(copy)
            x_dev.record_stream(compute)
            out = extractor.device_features(x_dev)
            host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            host.copy_(out, non_blocking=True)
            done = torch.cuda.Event()
            done.record(compute)
            pending.append((tag, host, done))
        while len(pending) > depth:
            yield _collect(*pending.popleft())
    while pending:
        yield _collect(*pending.popleft())


def _collect(tag, host: torch.Tensor | None, done: torch.cuda.Event | None):
    if host is None:
        return tag, None
    done.synchronize()
    return tag, host.numpy().copy()  # the pinned block goes back to the allocator's cache
