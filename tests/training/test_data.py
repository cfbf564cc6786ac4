"""The paper's transforms, the multi-task dataset, and the uint8 data path (workers -> device)."""

from __future__ import annotations

import numpy as np
import timm
import torch
from PIL import Image

from mtdp_hub.features.pixels import Normalise, normalise_uint8, uint8_eval_transform
from mtdp_hub.features.specs import data_config, eval_transform
from training.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiTaskDataset,
    SplitDataset,
    train_transform,
    train_transform_uint8,
)
from training.model import MultiTaskNet, set_training_preprocessing
from training.pool import load_pool
from training.sampler import TaskUniformSampler


def striped(w=60, h=40):
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = np.arange(w, dtype=np.uint8)[None, :] * 4  # red grows left -> right
    a[:, :, 1] = np.arange(h, dtype=np.uint8)[:, None] * 6  # green grows top -> bottom
    return Image.fromarray(a)


def unnormalise(x):
    return x * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)


def test_train_transform_max_square_crop_resize_flips_normalise():
    im = striped()
    outs = [train_transform(im, 32, torch.Generator().manual_seed(s)) for s in range(40)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    # The crop is the maximal square (40 x 40): all green rows (0..39) are kept, only its x position varies.
    greens = {
        round(float(unnormalise(o)[1].mean(1).max() - unnormalise(o)[1].mean(1).min()), 2) for o in outs
    }
    assert len(greens) == 1
    # Horizontal and vertical flips both happen, independently, about half the time.
    h = [bool(unnormalise(o)[0, :, 0].mean() > unnormalise(o)[0, :, -1].mean()) for o in outs]
    v = [bool(unnormalise(o)[1, 0, :].mean() > unnormalise(o)[1, -1, :].mean()) for o in outs]
    assert 8 < sum(h) < 32 and 8 < sum(v) < 32 and h != v
    # Same seed, same image.
    assert torch.equal(train_transform(im, 32, torch.Generator().manual_seed(3)), outs[3])
    # ImageNet normalisation.
    flat = Image.new('RGB', (10, 10), (124, 116, 104))
    x = train_transform(flat, 8, torch.Generator().manual_seed(0))
    assert torch.allclose(x, torch.zeros_like(x), atol=0.01)


def test_validation_transform_is_the_backbones_resize_then_centre_crop():
    backbone = timm.create_model('test_resnet', num_classes=0)
    set_training_preprocessing(backbone, 20)  # what a run records; validation and extraction read it back
    x = unnormalise(eval_transform(data_config(backbone))(striped(60, 40)))  # -> 30 x 20, centre 20 x 20
    assert x.shape == (3, 20, 20)
    red = x[0].mean(0) * 255 / 4  # original column index, scaled by 60/30 = 2
    assert abs(float(red[0]) - 2 * 5 - 1) < 2 and abs(float(red[-1]) - 2 * 24 - 1) < 2


def test_dataset_items_depend_only_on_the_draw_not_on_workers(tiny_pool):
    pool = load_pool(tiny_pool)
    ds = MultiTaskDataset(pool, ['train'], 16)
    assert ds.task_sizes == [12, 12, 20] and len(ds) == 44
    draws = list(TaskUniformSampler(ds.task_sizes, seed=0, num_draws=24))
    direct = [ds[k] for k in draws]
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=draws, num_workers=2)
    batched = torch.cat([x for x, _, _ in loader])
    assert batched.dtype == torch.uint8  # the workers hand over uint8; the device normalises
    assert torch.equal(batched, torch.stack([x for x, _, _ in direct]))
    for (_x, label, t), (flat, _) in zip(direct, draws):
        task, split, i = ds.index[flat]
        assert t == task and label == pool.tasks[t].splits[split].labels[i]


def test_uint8_batches_normalised_on_the_device_equal_the_float_transform(tiny_pool):
    """The loop's data path (uint8 from the workers, Normalise) gives the float transform's numbers."""
    pool = load_pool(tiny_pool)
    ds = MultiTaskDataset(pool, ['train'], 24)
    draws = list(TaskUniformSampler(ds.task_sizes, seed=3, num_draws=16))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, sampler=draws, num_workers=0)
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, torch.device('cpu'), torch.channels_last)
    batches = [(x, normalise(x)) for x, _, _ in loader]
    assert all(x.dtype == torch.uint8 for x, _ in batches)
    got = torch.cat([n for _, n in batches])
    reference = []
    for flat, seed in draws:
        t, split, i = ds.index[flat]
        im = pool.tasks[t].load(split, i)
        reference.append(train_transform(im, 24, torch.Generator().manual_seed(seed)))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.stack(reference), rtol=0, atol=1e-6)


def test_validation_batches_equal_the_backbones_float_eval_transform(tiny_pool):
    """Validation: the eval transform split at ToTensor (uint8 in the workers) + Normalise on the device."""
    from training.validation import evaluate

    pool = load_pool(tiny_pool)
    backbone = timm.create_model('test_resnet', num_classes=0)
    for size in (None, 20):  # timm's own data config (mean 0.5, crop_pct 0.95), then a run's
        if size:
            set_training_preprocessing(backbone, size)
        float_transform = eval_transform(data_config(backbone))
        transform, mean, std = uint8_eval_transform(float_transform)
        loader = torch.utils.data.DataLoader(SplitDataset(pool, 1, 'val', transform), batch_size=4)
        got = torch.cat([Normalise(mean, std)(x) for x, _, _ in loader])
        task = pool.tasks[1]
        ref = torch.stack([float_transform(task.load('val', i)) for i in range(len(task.splits['val']))])
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    # and evaluate() runs through it (channels_last batches included)
    model = MultiTaskNet(backbone, {t.name: t.num_classes for t in pool.tasks})
    metrics = evaluate(model, pool, 'val', 4, torch.device('cpu'), memory_format=torch.channels_last)
    binary = [f'val/{t.name}/auc' for t in pool.tasks if t.num_classes == 2]
    assert sorted(metrics) == sorted([f'val/{t.name}/acc' for t in pool.tasks] + binary)


def test_train_transform_is_the_uint8_transform_normalised():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x8 = train_transform_uint8(striped(), 24, g1)
    assert x8.dtype == torch.uint8 and x8.shape == (3, 24, 24)
    torch.testing.assert_close(
        train_transform(striped(), 24, g2), normalise_uint8(x8, IMAGENET_MEAN, IMAGENET_STD), rtol=0, atol=0
    )
