"""BN re-calibration on the device through the loop's own data path, from real H&E images.

24 batches (the released configs use 20) of the 24 Kather 2016 tiles in ``tests/assets`` split into
two tasks, decoded and augmented to uint8 (on CUDA in two DataLoader workers, pinned), normalised on
the device and checked batch by batch (:func:`training.loop.recalibrate`): every BN statistic comes
out finite and the backbone's eval-mode output is unchanged (the re-calibration is
output-preserving). This is the path on which decoding JPEGs on the GPU once corrupted the
statistics. ``--gpu-device cpu`` runs it on the CPU with a smaller model and size.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from mtdp_hub.features.pixels import Normalise
from training import loop
from training.data import IMAGENET_MEAN, IMAGENET_STD, MultiTaskDataset
from training.distributed import Dist
from training.pool import load_pool
from training.sampler import TaskUniformSampler

KATHER = Path(__file__).resolve().parents[1] / 'assets' / 'kather2016'
BATCHES, BATCH = 24, 16


def kather_pool(root: Path) -> Path:
    """Two tasks of four classes each, ``{task}/train/{class}/`` linking the real tiles."""
    classes = sorted(p.name for p in KATHER.iterdir() if p.is_dir())
    for task, names in (('tissue_a', classes[:4]), ('tissue_b', classes[4:])):
        for name in names:
            (root / task / 'train').mkdir(parents=True, exist_ok=True)
            (root / task / 'train' / name).symlink_to(KATHER / name)
    pool = root / 'pool.yaml'
    pool.write_text(f'tasks:\n  - root: {root / "tissue_a"}\n  - root: {root / "tissue_b"}\n')
    return pool


def test_recalibration_over_24_real_batches_is_finite_and_output_preserving(
    gpu_device, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)  # compare the outputs in float32
    on_cuda = gpu_device.type == 'cuda'
    # ResNet18 at 224 px on CUDA; on the CPU timm's tiny test_resnet at 48 px, the same logic in seconds
    arch, size, memory_format = (
        ('resnet18', 224, torch.channels_last) if on_cuda else ('test_resnet', 48, torch.contiguous_format)
    )
    pool = load_pool(kather_pool(tmp_path / 'pool'))
    train_set = MultiTaskDataset(pool, ['train'], size)
    sampler = TaskUniformSampler(train_set.task_sizes, 0, num_draws=BATCHES * BATCH)
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, gpu_device, memory_format)
    loader_kw = {'num_workers': 2 if on_cuda else 0, 'pin_memory': on_cuda}
    data = loop._Data(pool, train_set, sampler, BATCH, loader_kw, [], normalise)

    torch.manual_seed(0)
    backbone = timm.create_model(arch, num_classes=0).to(gpu_device, memory_format=memory_format).eval()
    probe = normalise(torch.stack([train_set[(k, k)][0] for k in range(len(train_set))]))
    with torch.no_grad():
        before = backbone(probe)
    bn = [m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    means_before = [m.running_mean.clone() for m in bn]

    assert loop.recalibrate(backbone, data, seed=0, n_batches=BATCHES, d=Dist(device=gpu_device)) == BATCHES

    for m, mean0 in zip(bn, means_before):
        for t in (m.running_mean, m.running_var, m.weight, m.bias):
            assert torch.isfinite(t).all()
        assert not torch.equal(m.running_mean, mean0)  # the statistics are the H&E batches' now
        assert int(m.num_batches_tracked) == BATCHES
    assert not any(m._forward_pre_hooks for m in backbone.modules())
    with torch.no_grad():
        after = backbone.eval()(probe)
    assert torch.isfinite(after).all()
    scale = before.abs().max()
    assert (after - before).abs().max() <= 1e-3 * scale, float((after - before).abs().max() / scale)
