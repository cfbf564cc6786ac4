"""uint8 pixels from the workers, float on the device: the one data path of training, validation,
fine-tuning and extraction.

DataLoader workers decode and geometrically transform images (crop, resize, flips) and hand over
uint8 CHW tensors: a quarter of the bytes of float32 through the worker queue, the pinned copy
and the host-to-device transfer, and no float arithmetic on the CPU cores that decode. The
device then converts and normalises a whole batch at once with :class:`Normalise`.

Normalisation is ``(x - 255 mean) * 1 / (255 std)``: what ``ToTensor`` + ``Normalize`` compute,
up to float rounding (about 1e-6; the tests bound it), in one conversion and two in-place passes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

__all__ = ['to_uint8', 'uint8_eval_transform', 'Normalise', 'normalise_uint8']


def to_uint8(im: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> a contiguous uint8 CHW tensor (no scaling)."""
    return (
        torch.from_numpy(np.array(im.convert('RGB') if im.mode != 'RGB' else im, dtype=np.uint8))
        .permute(2, 0, 1)
        .contiguous()
    )


def _mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    mean255 = torch.tensor([float(m) * 255 for m in mean], dtype=torch.float32)
    inv_std255 = 1 / torch.tensor([float(s) * 255 for s in std], dtype=torch.float32)
    return mean255, inv_std255


def normalise_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 CHW or NCHW -> normalised float32, as :class:`Normalise` does for a batch on its device."""
    mean255, inv_std255 = _mean_std(mean, std)
    shape = (3, 1, 1) if x.dim() == 3 else (1, 3, 1, 1)
    return x.float().sub_(mean255.view(shape)).mul_(inv_std255.view(shape))


class Normalise:
    """A uint8 NCHW batch -> on ``device``, in ``memory_format``, normalised float32.

    The copy is ``non_blocking`` (from pinned memory it overlaps the previous step); nothing
    here waits for the device.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        device: torch.device | str = 'cpu',
        memory_format: torch.memory_format = torch.contiguous_format,
    ):
        self.device, self.memory_format = torch.device(device), memory_format
        mean255, inv_std255 = _mean_std(mean, std)
        self.mean255 = mean255.view(1, 3, 1, 1).to(self.device)
        self.inv_std255 = inv_std255.view(1, 3, 1, 1).to(self.device)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f'Normalise expects a uint8 batch, got {x.dtype} (normalise once, not twice)')
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f'Normalise expects an (N, 3, H, W) batch, got shape {tuple(x.shape)}')
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        return x.float().sub_(self.mean255).mul_(self.inv_std255)


def uint8_eval_transform(transform: Callable) -> tuple[Callable[[Image.Image], torch.Tensor], list, list]:
    """Split a timm / torchvision eval transform into its PIL part (ending in uint8) and its mean / std.

    ``transform`` is a ``Compose`` that ends with ``ToTensor`` (or timm's ``MaybeToTensor``) and
    ``Normalize``; everything before them (resize, crop) is kept, and :func:`to_uint8` replaces the
    two. Returns ``(pil_to_uint8, mean, std)``.
    """
    steps = list(getattr(transform, 'transforms', []))
    if len(steps) < 2 or not isinstance(steps[-1], T.Normalize):
        raise ValueError(f'expected a Compose ending in ToTensor + Normalize, got {transform!r}')
    norm, to_tensor = steps[-1], steps[-2]
    if type(to_tensor).__name__ not in ('ToTensor', 'MaybeToTensor'):
        raise ValueError(f'expected ToTensor before Normalize, got {to_tensor!r}')
    mean = [float(m) for m in torch.as_tensor(norm.mean).flatten()]
    std = [float(s) for s in torch.as_tensor(norm.std).flatten()]
    return T.Compose([*steps[:-2], to_uint8]), mean, std
