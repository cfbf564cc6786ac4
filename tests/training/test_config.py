"""Config: defaults are the paper's, strict YAML load, overrides, the saved config reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.config import Config, ConfigError, apply_overrides, load_config, save_config

CONFIGS = Path(__file__).resolve().parents[2] / 'training' / 'configs'


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert (cfg.data.batch_size, cfg.data.size, cfg.schedule.iterations, cfg.schedule.warmup_iterations) == (
        64,
        224,
        50_000,
        5_000,
    )
    assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.schedule.warmup_lr) == (0.9, 0.0, 1e-3)
    assert cfg.schedule.bn_recalibration_batches == 20 and cfg.model.init == 'imagenet'


@pytest.mark.parametrize(
    'name, arch, lr, tau, weights',
    [
        ('mtdp_resnet50', 'resnet50', 1e-3, 1.0, 'resnet50.tv_in1k'),
        ('mtdp_densenet121', 'mtdp_densenet121', 1e-4, 5.0, 'densenet121.tv_in1k'),
    ],
)
def test_released_configs_carry_the_released_settings(name, arch, lr, tau, weights):
    cfg = load_config(CONFIGS / f'{name}.yaml')
    assert cfg.run.name == name and cfg.model.arch == arch and cfg.model.imagenet_weights == weights
    assert (cfg.optim.lr, cfg.optim.head_lr_mult, cfg.optim.momentum) == (lr, tau, 0.9)
    assert (cfg.schedule.iterations, cfg.schedule.warmup_iterations, cfg.schedule.warmup_lr) == (
        50_000,
        5_000,
        1e-3,
    )
    assert cfg.data.batch_size == 64 and cfg.data.train_splits == ['train', 'val', 'test']


def test_unknown_key_is_an_error_naming_it(tmp_path):
    p = tmp_path / 'c.yaml'
    p.write_text('optim:\n  lr: 0.1\n  learning_rat: 0.2\n')
    with pytest.raises(ConfigError, match=r'optim\.learning_rat'):
        load_config(p)
    p.write_text('optimiser: {lr: 0.1}\n')
    with pytest.raises(ConfigError, match='optimiser'):
        load_config(p)
    p.write_text('optim: {lr: fast}\n')
    with pytest.raises(ConfigError, match=r'optim\.lr'):
        load_config(p)


def test_overrides_and_saved_config_reload(tmp_path):
    cfg = load_config(CONFIGS / 'demo.yaml', ['optim.lr=0.5', 'data.train_splits=[train, val]', 'run.name=x'])
    assert cfg.optim.lr == 0.5 and cfg.data.train_splits == ['train', 'val'] and cfg.run.name == 'x'
    with pytest.raises(ConfigError, match='optim.lrr'):
        apply_overrides(cfg, ['optim.lrr=1'])
    with pytest.raises(ConfigError, match='bad_images'):
        apply_overrides(cfg, ['data.bad_images=ignore'])
    save_config(cfg, tmp_path / 'config.yaml')
    assert load_config(tmp_path / 'config.yaml') == cfg


def test_gpu_decoding_is_refused_at_config_load_saying_why_and_what_to_do(tmp_path):
    """The settings that gave 'non-finite loss at iteration 1' on a GPU now stop before any work."""
    path = tmp_path / 'gpu_decode.yaml'
    path.write_text('pool: demo\ndata:\n  decode: gpu\nschedule:\n  bn_recalibration_batches: 20\n')
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert str(path) in message and 'data.decode' in message and 'nvJPEG' in message
    assert 'remove data.decode' in message and 'DataLoader workers' in message
    with pytest.raises(ConfigError, match='data.decode'):
        load_config(None, ['data.decode=gpu', 'schedule.bn_recalibration_batches=20'])


def test_data_decode_cpu_is_accepted_with_a_warning_and_dropped(tmp_path):
    """Run folders saved before the key went away (decode: cpu) still load and resume."""
    path = tmp_path / 'old.yaml'
    path.write_text('data:\n  decode: cpu\n  size: 64\n')
    with pytest.warns(FutureWarning, match='data.decode: cpu is ignored'):
        cfg = load_config(path)
    assert cfg.data.size == 64 and not hasattr(cfg.data, 'decode')
    with pytest.warns(FutureWarning, match='remove data.decode'):
        load_config(None, ['data.decode=cpu'])
    save_config(cfg, tmp_path / 'saved.yaml')
    assert 'decode' not in (tmp_path / 'saved.yaml').read_text()
