"""The model side of extraction: a backbone with its preprocessing, layer, TTA, device and precision.

Preprocessing is split in two (:mod:`.pixels`): :attr:`FeatureExtractor.pixel_transform` (PIL image
-> resized, cropped uint8 CHW tensor) runs in DataLoader workers, and the normalisation runs on the
model's device on whole batches (:attr:`FeatureExtractor.normalise`). :attr:`FeatureExtractor.transform`
is timm's own eval transform (float, normalised), kept as the reference the uint8 path is tested
against and for callers that preprocess images themselves.
"""

from __future__ import annotations

import copy
import os
from typing import Any

import torch
from PIL import Image

from ..errors import InvalidOptionError
from .pixels import Normalise, uint8_eval_transform
from .runtime import autocast, autocast_dtype, pick_device, precision_name
from .specs import (
    data_config,
    eval_transform,
    load_backbone,
    model_identity,
    package_versions,
    weights_provenance,
)

__all__ = ['FeatureExtractor', 'TTA_VIEWS', 'Rescale']

TTA_VIEWS = {'none': 1, 'flip3': 3, 'flip4': 4}


class Rescale:
    """Resize a PIL image by ``factor`` (bilinear, antialiased when shrinking), then apply ``then``:
    e.g. 0.25 um/px patches by 0.5 to reach 0.5 um/px before the model's own preprocessing."""

    def __init__(self, factor: float, then):
        self.factor, self.then = factor, then

    def __call__(self, im: Image.Image):
        if self.factor != 1:
            w, h = im.size
            im = im.resize((max(1, round(w * self.factor)), max(1, round(h * self.factor))), Image.BILINEAR)
        return self.then(im)


class FeatureExtractor:
    """A backbone with its preprocessing, the chosen layer, TTA flips, device and precision.

    layer: ``'pooled'`` (the model's pooled final features), ``'trunc'`` (the stage before the last,
    average pooled: layer3 of a ResNet50 -> 1024-d, as CLAM), or a stage index into ``feature_info``.
    tta: ``'none'``, ``'flip3'`` (identity, h-flip, v-flip) or ``'flip4'`` (+ both), averaged.
    weights: a local weight file (safetensors, or ``.pth`` / ``.bin`` read with ``weights_only``)
    loaded instead of the model's registered sources; provenance records its path and SHA-256.
    source_mpp: the microns per pixel of the images; they are first resized to ``mpp`` (the scale
    the features are wanted at, by default the one the model's pretrained config records), so that
    patches scanned at another magnification reach the model at its scale.

    Preprocessing: ``pixel_transform`` (PIL -> uint8 CHW: rescale, resize, crop) for the
    DataLoader workers, ``normalise`` (uint8 batch -> normalised float on the device) for whole
    batches; ``transform`` is timm's float transform, the same numbers to float rounding.
    """

    def __init__(
        self,
        spec: str,
        *,
        seed: int = 0,
        layer: str = 'pooled',
        tta: str = 'none',
        img_size: int | None = None,
        device: str | None = 'auto',
        precision: str = 'auto',
        channels_last: bool | None = None,
        model: torch.nn.Module | None = None,
        source_mpp: float | None = None,
        mpp: float | None = None,
        weights: str | os.PathLike | None = None,
    ):
        if tta not in TTA_VIEWS:
            raise InvalidOptionError(f'tta must be one of {sorted(TTA_VIEWS)}, not {tta!r}')
        self.spec, self.seed, self.layer, self.tta = spec, seed, str(layer), tta
        self.weights = None if weights is None else str(weights)
        self._provenance: dict[str, Any] | None = None
        self.device = pick_device(device)
        self.amp_dtype = autocast_dtype(precision, self.device)
        if model is None:
            model = load_backbone(spec, seed=seed, weights=weights)
        self.model = model.eval().to(self.device)
        self.channels_last = self.device.type == 'cuda' if channels_last is None else channels_last
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.stage = self._stage_index()
        self.data_config = data_config(self.model, img_size)
        self.transform = eval_transform(self.data_config)
        self.pixel_transform, mean, std = uint8_eval_transform(self.transform)
        self.normalise = Normalise(mean, std, self.device, self.memory_format)
        if source_mpp is not None:
            factor = self._rescale_factor(source_mpp, mpp)
            self.transform = Rescale(factor, self.transform)
            self.pixel_transform = Rescale(factor, self.pixel_transform)

    def _rescale_factor(self, source_mpp: float, mpp: float | None) -> float:
        target = mpp or (getattr(self.model, 'pretrained_cfg', None) or {}).get('mpp')
        if target is None:
            raise InvalidOptionError(
                f'{self.spec} records no input scale (the mtdp_* pool mixed scales): give the wanted scale '
                'with --mpp (e.g. 0.5 for ~20x)'
            )
        if not (source_mpp > 0 and target > 0):
            raise InvalidOptionError(f'microns per pixel must be positive, got {source_mpp} and {target}')
        self.data_config.update(source_mpp=float(source_mpp), target_mpp=float(target))
        return source_mpp / target

    def _stage_index(self) -> int | None:
        if self.layer == 'pooled':
            return None
        n = len(getattr(self.model, 'feature_info', []) or [])
        if not hasattr(self.model, 'forward_intermediates') or n == 0:
            raise InvalidOptionError(
                f'{self.spec} does not expose intermediate stages (layer={self.layer!r})'
            )
        if self.layer == 'trunc':
            return n - 2
        try:
            idx = int(self.layer)
        except ValueError:
            raise InvalidOptionError(
                f"layer must be 'pooled', 'trunc' or a stage index, not {self.layer!r}"
            ) from None
        if not -n <= idx < n:
            raise InvalidOptionError(f'stage index {idx} out of range for {self.spec} ({n} stages)')
        return idx % n

    def provenance(self) -> dict[str, Any]:
        """Where the features come from. Computed once (it hashes the weight file), returned as a copy."""
        if self._provenance is None:
            prov = model_identity(self.spec, self.model)
            prov.update(
                weights=weights_provenance(self.spec, self.model, seed=self.seed),
                preprocessing=self.data_config,
                layer=self.layer,
                tta=self.tta,
                precision=precision_name(self.amp_dtype),
                feature_dtype='float32',
                versions=package_versions(),
            )
            self._provenance = prov
        return copy.deepcopy(self._provenance)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.model(x)
        feats = self.model.forward_intermediates(
            x, indices=[self.stage], intermediates_only=True, stop_early=True
        )[0]
        return feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.mean(dim=1)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A batch on the device, in the model's memory format, normalised: a uint8 batch (N, 3, H, W)
        is normalised here; a float batch is taken as already normalised. Nothing waits for the device."""
        if x.dtype == torch.uint8:
            return self.normalise(x)
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    @torch.inference_mode()
    def device_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features (float32) of the batch ``x`` (see :meth:`prepare`), left on the device, no host sync."""
        x = self.prepare(x)
        views = [x, x.flip(3), x.flip(2), x.flip((2, 3))][: TTA_VIEWS[self.tta]]
        with autocast(self.device, self.amp_dtype):
            out = sum(self._forward(v).float() for v in views) / len(views)
        return out.float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features (float32, on CPU) of a batch ``x`` (N, 3, H, W): uint8 pixels as
        :attr:`pixel_transform` gives them (normalised on the device), or a float batch already
        normalised (as :attr:`transform` gives it). Waits for the device: for a stream of batches,
        :func:`~mtdp_hub.features.pipeline.stream_features` keeps several in flight instead."""
        return self.device_features(x).cpu()
