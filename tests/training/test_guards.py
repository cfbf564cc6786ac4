"""Non-finite batches stop a run naming their images: BN re-calibration (inputs and activations,
the model left untouched) and training inputs (flagged on the device, checked when the loop syncs)."""

from __future__ import annotations

import pytest
import timm
import torch

from mtdp_hub.features.pixels import Normalise
from training import loop
from training.data import IMAGENET_MEAN, IMAGENET_STD, MultiTaskDataset
from training.distributed import Dist
from training.guards import InputWatch, NonFiniteBatchError, finite_per_sample
from training.pool import load_pool
from training.sampler import TaskUniformSampler


def loop_data(pool_path, size=32, batch=8, device='cpu') -> loop._Data:
    """The loop's data path on a pool: uint8 dataset, task-uniform sampler, Normalise on ``device``."""
    pool = load_pool(pool_path)
    train_set = MultiTaskDataset(pool, pool.train_splits, size)
    sampler = TaskUniformSampler(train_set.task_sizes, 0, num_draws=100 * batch)
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, torch.device(device))
    kw = {'num_workers': 0, 'pin_memory': False}
    return loop._Data(pool, train_set, sampler, batch, kw, [], normalise)


def bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def listed(message: str) -> list[str]:
    """The images an error lists, one per indented line after its first line."""
    return [line.strip() for line in message.split('\n')[1:] if line.startswith('  ')]


def calibration_names(data: loop._Data, seed: int, batch: int, k: int) -> list[str]:
    """The images of re-calibration batch ``k`` (0-based), recomputed from the sampler's stream."""
    s = TaskUniformSampler(data.train_set.task_sizes, seed + 7919, num_draws=10_000)
    return data.names(s.draws(k * batch, batch))


def test_recalibration_with_corrupted_activations_names_the_batch_and_changes_nothing(tiny_pool):
    """The nvJPEG race overwrote activations of a queued forward: simulated by a hook writing NaN into
    layer1's output for the third batch only. Finite inputs, non-finite BN statistics: refused."""
    data = loop_data(tiny_pool)
    backbone = timm.create_model('test_resnet', num_classes=0)
    before = bn_state(backbone)
    calls = {'n': 0}

    def corrupt(module, inputs, output):
        calls['n'] += 1
        if calls['n'] == 3:
            output[1].fill_(float('nan'))

    handle = backbone.layer1.register_forward_hook(corrupt)
    with pytest.raises(NonFiniteBatchError) as e:
        loop.recalibrate(backbone, data, seed=0, n_batches=5, d=Dist())
    handle.remove()
    message = str(e.value)
    assert 'batch 3' in message and 'non-finite activations' in message and 'layer2' in message
    assert listed(message) == calibration_names(data, 0, 8, 2)  # task [split] file, each image of batch 3
    after = bn_state(backbone)
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights, biases, running stats
    assert not any(m._forward_pre_hooks for m in backbone.modules())  # no hook left behind


def test_recalibration_refuses_a_non_finite_input_naming_the_image(tiny_pool):
    data = loop_data(tiny_pool)
    normalise = data.normalise
    calls = {'n': 0}

    def corrupting(x):
        out = normalise(x)
        calls['n'] += 1
        if calls['n'] == 2:
            out[5, 0, 3, 3] = float('inf')
        return out

    data.normalise = corrupting
    backbone = timm.create_model('test_resnet', num_classes=0)
    before = bn_state(backbone)
    with pytest.raises(NonFiniteBatchError) as e:
        loop.recalibrate(backbone, data, seed=0, n_batches=4, d=Dist())
    bad = calibration_names(data, 0, 8, 1)[5]
    assert 'batch 2' in str(e.value) and '1 image(s)' in str(e.value) and listed(str(e.value)) == [bad]
    assert all(torch.equal(v, bn_state(backbone)[k]) for k, v in before.items())


def test_a_clean_recalibration_passes_the_guard_and_preserves_the_output(tiny_pool):
    data = loop_data(tiny_pool)
    backbone = timm.create_model('test_resnet', num_classes=0).eval()
    x = data.normalise(torch.stack([data.train_set[(k, k)][0] for k in range(8)]))
    with torch.no_grad():
        ref = backbone(x)
    assert loop.recalibrate(backbone, data, seed=0, n_batches=3, d=Dist()) == 3
    with torch.no_grad():
        torch.testing.assert_close(backbone.eval()(x), ref, rtol=1e-4, atol=1e-4)


def test_input_watch_keeps_the_first_bad_batch_and_names_its_samples():
    watch = InputWatch(4, torch.device('cpu'))
    good = torch.zeros(4, 3, 2, 2)
    bad3, bad5 = good.clone(), good.clone()
    bad3[1, 2, 0, 0], bad3[3, 0, 1, 1] = float('nan'), float('-inf')
    bad5[0] = float('nan')
    for it, x in enumerate([good, good, bad3, good, bad5], start=1):
        watch.add(x, it)
    watch_names = {3: ['a', 'b', 'c', 'd'], 5: ['e', 'f', 'g', 'h']}
    with pytest.raises(NonFiniteBatchError, match='iteration 3') as e:
        watch.check(bool, watch_names.__getitem__)
    assert listed(str(e.value)) == ['b', 'd']
    clean = InputWatch(4, torch.device('cpu'))
    clean.add(good, 1)
    clean.check(bool, watch_names.__getitem__)  # nothing to say
    assert finite_per_sample(good.to(memory_format=torch.channels_last)).all()


def test_a_nan_training_input_stops_the_run_naming_its_file(tiny_config, monkeypatch):
    """Memory corruption after the normalisation (simulated): iteration 3, sample 5 gets a NaN."""
    calls = {'n': 0}

    class Corrupting(Normalise):
        def __call__(self, x):
            out = super().__call__(x)
            calls['n'] += 1
            if calls['n'] == 3:
                out[5, 1, 0, 0] = float('nan')
            return out

    monkeypatch.setattr(loop, 'Normalise', Corrupting)
    cfg = tiny_config(schedule={'bn_recalibration_batches': 0, 'log_every': 4})
    with pytest.raises(NonFiniteBatchError) as e:
        loop.main(cfg)
    data = loop_data(cfg.pool)
    sampler = TaskUniformSampler(data.train_set.task_sizes, cfg.run.seed, num_draws=10_000)
    names = data.names(sampler.draws(2 * 8, 8))
    message = str(e.value)
    assert 'iteration 3' in message and listed(message) == [names[5]]
    log = (loop.run_dir_of(cfg) / 'log.txt').read_text()
    assert 'error: non-finite network input at iteration 3' in log and names[5] in log
