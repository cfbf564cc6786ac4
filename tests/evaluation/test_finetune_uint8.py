"""Fine-tuning reads uint8 batches from its workers and normalises them on the device: the same
tensors as the float path it replaced (flips, resize, crop, ToTensor, Normalize in the workers),
drawn with the same random choices."""

from __future__ import annotations

import pytest
import torch

from mtdp_hub.evaluation.finetune import FinetuneConfig, _loader, _train_transform, pixel_transforms
from mtdp_hub.features.pixels import Normalise
from mtdp_hub.features.specs import data_config, eval_transform, load_backbone
from mtdp_hub.images import find_images
from mtdp_hub.tasks import Split
from tests.conftest import KATHER_ASSETS


def _batches(loader, normalise=None, seed=0):
    torch.manual_seed(seed)  # the flips draw from torch's global generator (in each worker: its own seed)
    out = []
    for x, y in loader:
        out.append((normalise(x) if normalise is not None else x, y))
    return out


@pytest.mark.parametrize('workers', [0, 1])
def test_uint8_batches_normalised_on_the_device_equal_the_float_batches(workers):
    paths = find_images(KATHER_ASSETS)
    split = Split(paths=paths, labels=[i % 8 for i in range(len(paths))])
    dcfg = data_config(load_backbone('random:resnet18'), 56)  # bicubic resize + 0.95 centre crop
    assert dcfg['crop_pct'] != 1.0
    cfg = FinetuneConfig(batch_size=5, num_workers=workers)
    device = torch.device('cpu')
    train_tf, eval_tf, mean, std = pixel_transforms(dcfg)
    normalise = Normalise(mean, std, device)

    old = _batches(_loader(split, _train_transform(eval_transform(dcfg)), cfg, device, shuffle=True, seed=3))
    new = _batches(_loader(split, train_tf, cfg, device, shuffle=True, seed=3), normalise)
    raw = _batches(_loader(split, train_tf, cfg, device, shuffle=True, seed=3))
    assert len(old) == len(new) == 5
    for (xo, yo), (xn, yn), (xr, _) in zip(old, new, raw):
        assert xr.dtype == torch.uint8 and xn.dtype == torch.float32
        assert torch.equal(yo, yn)
        torch.testing.assert_close(xn, xo, atol=1e-6, rtol=0)

    # the flips are drawn: the same images without augmentation differ from some training ones
    plain = _batches(_loader(split, eval_tf, cfg, device, shuffle=True, seed=3), normalise)
    assert any(not torch.allclose(a[0], b[0], atol=1e-6) for a, b in zip(plain, new))
    # and the eval path is timm's float transform
    evaluated = _batches(_loader(split, eval_tf, cfg, device, shuffle=False, seed=0), normalise)
    reference = _batches(_loader(split, eval_transform(dcfg), cfg, device, shuffle=False, seed=0))
    for (xn, _), (xo, _) in zip(evaluated, reference):
        torch.testing.assert_close(xn, xo, atol=1e-6, rtol=0)
