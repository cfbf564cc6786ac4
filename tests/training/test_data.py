"""The paper's transforms and the multi-task dataset."""

from __future__ import annotations

import numpy as np
import timm
import torch
from PIL import Image

from mtdp_hub.features.specs import data_config, eval_transform
from training.data import IMAGENET_MEAN, IMAGENET_STD, MultiTaskDataset, train_transform
from training.model import set_training_preprocessing
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
    assert torch.equal(batched, torch.stack([x for x, _, _ in direct]))
    for (_x, label, t), (flat, _) in zip(direct, draws):
        task, split, i = ds.index[flat]
        assert t == task and label == pool.tasks[t].splits[split].labels[i]


def _jpeg_task(root, size=(60, 40), n=6, mode='RGB'):
    rng = np.random.default_rng(0)
    for cls in ('a', 'b'):
        (root / 'train' / cls).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(a).convert(mode).save(root / 'train' / cls / f'p_{i}.jpg', quality=90)
    return root


def test_device_decode_makes_the_cpu_paths_batch(tmp_path):
    """data.decode: gpu (run here on the CPU device): same crops and flips as the Pillow path, from bytes."""
    from training.data import DeviceAugment, EncodedMultiTaskDataset, collate_encoded

    pool = load_pool(
        {
            'tasks': [
                {'name': 'rgb', 'root': str(_jpeg_task(tmp_path / 'rgb'))},
                {'name': 'grey', 'root': str(_jpeg_task(tmp_path / 'grey', mode='L'))},
            ]
        }
    )
    for size in (40, 24):  # 40: the crop is already the input size; 24: resized
        cpu, enc = MultiTaskDataset(pool, ['train'], size), EncodedMultiTaskDataset(pool, ['train'], size)
        draws = list(TaskUniformSampler(cpu.task_sizes, seed=1, num_draws=16))
        items, _, tasks = collate_encoded([enc[k] for k in draws])
        assert {im.params is None for im, t in zip(items, tasks.tolist()) if t == 1} == {True}  # grey: CPU
        assert {im.data.dim() for im, t in zip(items, tasks.tolist()) if t == 0} == {1}  # RGB JPEG: bytes
        x = DeviceAugment(size, torch.device('cpu'))(items)
        ref = torch.stack([cpu[k][0] for k in draws])
        diff = (x - ref).abs()
        if size == 40:
            assert diff.max() < 1e-5
        else:  # Pillow's and torch's antialiased bilinear resize differ by at most a grey level or two
            assert diff.max() < 2.5 / 255 / 0.224 and diff.mean() < 0.01


def test_device_decode_trains_to_the_same_weights(tmp_path):
    """Through the whole loop: decoding on the device gives the weights the Pillow path gives."""
    from training.config import from_dict
    from training.loop import main

    from .conftest import tiny_config_dict

    pool = tmp_path / 'pool.yaml'
    pool.write_text(
        f'tasks:\n  - root: {_jpeg_task(tmp_path / "a")}\n  - root: {_jpeg_task(tmp_path / "b", n=4)}\n'
    )
    sha = {}
    for decode in ('cpu', 'gpu'):
        d = tiny_config_dict(
            pool,
            tmp_path / 'runs',
            schedule={'iterations': 4, 'warmup_iterations': 1, 'bn_recalibration_batches': 1},
        )
        d['data'].update(size=40, decode=decode, scan_images=False)
        d['run']['name'] = decode
        sha[decode] = main(from_dict(d).validate())['weights_sha256']
    assert sha['cpu'] == sha['gpu']


def test_device_decode_sends_a_png_named_jpg_the_pillow_way(tmp_path):
    from training.data import EncodedMultiTaskDataset

    root = _jpeg_task(tmp_path / 't', n=2)
    fake = root / 'train' / 'a' / 'p_0.jpg'
    Image.open(fake).convert('RGB').save(fake, format='PNG')  # PNG bytes under a .jpg name
    pool = load_pool({'tasks': [{'name': 't', 'root': str(root)}]})
    ds = EncodedMultiTaskDataset(pool, ['train'], 24)
    flat = [k for k, (_, _, i) in enumerate(ds.index) if pool.tasks[0].splits['train'].items[i] == str(fake)][
        0
    ]
    image, _, _ = ds[(flat, 0)]
    assert image.params is None and image.data.shape == (3, 24, 24)


def test_batch_normalisation_on_the_device_equals_the_per_image_path():
    from training.data import DeviceNormalise, normalise_uint8, train_transform_uint8

    g = torch.Generator().manual_seed(0)
    batch = torch.stack([train_transform_uint8(striped(), 24, g) for _ in range(4)])
    assert batch.dtype == torch.uint8
    out = DeviceNormalise(torch.device('cpu'), torch.channels_last)(batch)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, torch.stack([normalise_uint8(x) for x in batch]))
