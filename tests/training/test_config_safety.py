"""Config safety: exponent floats, no YAML aliases (billion laughs), value ranges, pool train_splits."""

from __future__ import annotations

import time

import pytest

from training.config import Config, ConfigError, apply_overrides, load_config
from training.pool import PoolError, load_pool

# Nine levels of ten aliases: 10**9 strings once expanded.
LAUGHS = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + ''.join(
    f'{chr(98 + i)}: &{chr(98 + i)} [{",".join(["*" + chr(97 + i)] * 10)}]\n' for i in range(8)
)


@pytest.mark.parametrize('text, value', [('1e-4', 1e-4), ('5E3', 5e3), ('+3e+2', 3e2), ('-2e-3', -2e-3)])
def test_exponent_floats_parse_in_overrides(text, value):
    if value > 0:
        cfg = apply_overrides(Config(), [f'optim.lr={text}', f'schedule.warmup_lr={text}'])
        assert (cfg.optim.lr, cfg.schedule.warmup_lr) == (value, value)
    else:  # read as a number: the error is the range, not the type
        with pytest.raises(ConfigError, match=r'optim\.lr must be'):
            apply_overrides(Config(), [f'optim.lr={text}'])


def test_exponent_floats_parse_in_config_files(tmp_path):
    p = tmp_path / 'c.yaml'
    p.write_text('optim: {lr: 1e-4, weight_decay: 5E-5}\nschedule: {warmup_lr: 2e-3}\n')
    cfg = load_config(p)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.schedule.warmup_lr) == (1e-4, 5e-5, 2e-3)
    assert isinstance(cfg.optim.lr, float)


@pytest.mark.parametrize('text', ['nan', 'inf', '-inf', 'fast', '1e', 'e5', '1e-4x'])
def test_non_numbers_stay_errors_for_float_fields(text):
    with pytest.raises(ConfigError, match=r'optim\.lr'):
        apply_overrides(Config(), [f'optim.lr={text}'])


def test_exponent_text_stays_text_in_string_fields():
    assert apply_overrides(Config(), ['run.name=1e3']).run.name == '1e3'


def test_billion_laughs_config_fails_fast(tmp_path):
    p = tmp_path / 'laughs.yaml'
    p.write_text(LAUGHS)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r'laughs\.yaml.*(anchor|alias)'):
        load_config(p)
    assert time.monotonic() - start < 1


def test_aliases_are_refused_in_configs_and_overrides(tmp_path):
    p = tmp_path / 'c.yaml'
    p.write_text('optim: &o {lr: 0.1}\nschedule: {}\n')
    with pytest.raises(ConfigError, match=r'c\.yaml.*(anchor|alias)'):
        load_config(p)
    with pytest.raises(ConfigError, match=r'data\.train_splits.*(anchor|alias)'):
        apply_overrides(Config(), ['data.train_splits=[&x train, *x]'])


def test_billion_laughs_pool_fails_fast(tmp_path):
    p = tmp_path / 'laughpool.yaml'
    p.write_text(LAUGHS + 'tasks: [*i]\n')
    start = time.monotonic()
    with pytest.raises(PoolError, match=r'laughpool\.yaml.*(anchor|alias)'):
        load_pool(p)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    'override, key',
    [
        ('optim.momentum=5', 'optim.momentum'),
        ('optim.momentum=-0.1', 'optim.momentum'),
        ('optim.weight_decay=-1', 'optim.weight_decay'),
        ('schedule.val_every=-1', 'schedule.val_every'),
        ('schedule.iterations=0', 'schedule.iterations'),
        ('schedule.warmup_lr=0', 'schedule.warmup_lr'),
        ('schedule.bn_recalibration_batches=-1', 'schedule.bn_recalibration_batches'),
        ('schedule.checkpoint_every=0', 'schedule.checkpoint_every'),
        ('schedule.log_every=0', 'schedule.log_every'),
        ('schedule.keep_checkpoints=0', 'schedule.keep_checkpoints'),
        ('run.seed=-1', 'run.seed'),
        ('run.threads=-1', 'run.threads'),
        ('data.eval_batch_size=0', 'data.eval_batch_size'),
        ('data.num_workers=-1', 'data.num_workers'),
        ('data.prefetch_factor=0', 'data.prefetch_factor'),
        ('data.size=0', 'data.size'),
        ('data.batch_size=0', 'data.batch_size'),
        ('optim.lr=.nan', 'optim.lr'),
    ],
)
def test_out_of_range_values_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace('.', r'\.') + '.*must be'):
        apply_overrides(Config(), [override])


def test_edge_values_in_range_are_accepted():
    edges = ['optim.momentum=0', 'optim.weight_decay=0', 'schedule.val_every=0', 'run.seed=0']
    edges += ['run.threads=0', 'data.num_workers=0', 'schedule.bn_recalibration_batches=0']
    edges += ['data.prefetch_factor=1', 'data.eval_batch_size=1', 'schedule.iterations=1']
    edges += ['schedule.warmup_iterations=0']
    apply_overrides(Config(), edges)


def test_pool_train_splits_apply_unless_the_config_sets_them(tiny_pool):
    text = tiny_pool.read_text()
    tiny_pool.write_text('train_splits: [train, val]\n' + text)
    cfg = Config().validate()
    assert cfg.data.train_splits is None
    assert load_pool(tiny_pool, cfg.data.train_splits).train_splits == ['train', 'val']
    assert load_pool(tiny_pool, ['train']).train_splits == ['train']
    set_cfg = apply_overrides(cfg, ['data.train_splits=[train]'])
    assert set_cfg.data.train_splits == ['train']
    assert apply_overrides(set_cfg, ['data.train_splits=']).data.train_splits is None
