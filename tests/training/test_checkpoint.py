"""Checkpoints: atomic, keep-last-K, disk full, killed runs; resume equals an uninterrupted run."""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import training.checkpoint as ckpt
import training.loop as loop
import training.step as step
from mtdp_hub import _io
from training.config import ConfigError, to_dict

from .conftest import REPO_ROOT, run_training_cli


def test_atomic_save_keeps_last_k(tmp_path):
    for it in (1, 2, 3, 4):
        ckpt.save_checkpoint({'iteration': it, 'w': torch.full((3,), float(it))}, tmp_path, it, keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ['ckpt-000000003.pt', 'ckpt-000000004.pt']
    path, state = ckpt.latest_checkpoint(tmp_path)
    assert state['iteration'] == 4 and torch.equal(state['w'], torch.full((3,), 4.0))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]


def test_disk_full_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    ckpt.save_checkpoint({'iteration': 1, 'w': torch.ones(4)}, tmp_path, 1)
    before = (tmp_path / 'ckpt-000000001.pt').read_bytes()

    def full_disk(obj, f):
        f.write(b'partial bytes')
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(ckpt.torch, 'save', full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match='No space left.*previous checkpoints are intact'):
        ckpt.save_checkpoint({'iteration': 2, 'w': torch.zeros(4)}, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        'ckpt-000000001.pt',
        'ckpt-000000001.pt.sha256',
    ]  # no temp file, no ckpt 2
    assert (tmp_path / 'ckpt-000000001.pt').read_bytes() == before
    assert ckpt.latest_checkpoint(tmp_path)[1]['iteration'] == 1


def test_a_write_killed_before_the_rename_is_never_seen(tmp_path, monkeypatch):
    ckpt.save_checkpoint({'iteration': 1}, tmp_path, 1)
    dead = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    )
    stale = (
        tmp_path / f'.ckpt-000000002.pt.partial-{int(dead.stdout)}-0a1b'
    )  # what a SIGKILL mid-write leaves
    stale.write_bytes(b'half a checkpoint')
    alive = tmp_path / f'.ckpt-000000003.pt.partial-{os.getpid()}-0a1b'  # a write still in progress
    alive.write_bytes(b'being written')
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ['ckpt-000000001.pt']
    assert ckpt.clean_partial(tmp_path) == [stale] and not stale.exists() and alive.exists()
    alive.unlink()
    monkeypatch.setattr(_io, 'before_rename', lambda tmp: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint({'iteration': 2}, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ckpt-000000001.pt', 'ckpt-000000001.pt.sha256']


def final_state(cfg):
    return ckpt.latest_checkpoint(loop.run_dir_of(cfg) / 'checkpoints')[1]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize('stop_at, signum', [(2, signal.SIGTERM), (7, signal.SIGINT)])
def test_signal_saves_and_resume_equals_uninterrupted(tiny_config, monkeypatch, stop_at, signum):
    ref_cfg = tiny_config('ref')
    ref = loop.main(ref_cfg)
    cfg = tiny_config('stopped')

    def fault(d, iteration):
        if iteration == stop_at:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(loop, '_fault_point', fault)
    with pytest.raises(loop.TrainingInterrupted) as info:
        loop.main(cfg)
    assert info.value.iteration == stop_at and info.value.path.name == f'ckpt-{stop_at:09d}.pt'
    monkeypatch.setattr(loop, '_fault_point', lambda d, it: None)
    resumed = loop.main(cfg)  # run.resume: auto picks the checkpoint up
    assert resumed['resumed_from'] == stop_at
    assert resumed['weights_sha256'] == ref['weights_sha256']
    a, b = final_state(ref_cfg), final_state(cfg)
    assert a['iteration'] == b['iteration'] == 12
    assert_same_weights(a['model'], b['model'])
    assert a['optimizer']['state'].keys() == b['optimizer']['state'].keys()
    for k in a['optimizer']['state']:
        assert torch.equal(
            a['optimizer']['state'][k]['momentum_buffer'], b['optimizer']['state'][k]['momentum_buffer']
        )


def test_non_finite_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tiny_config, monkeypatch):
    cfg = tiny_config('nan')
    calls = {'n': 0}
    real = step.multitask_loss

    def exploding(logits, labels):
        calls['n'] += 1
        loss = real(logits, labels)
        return loss * float('nan') if calls['n'] == 10 else loss

    monkeypatch.setattr(step, 'multitask_loss', exploding)
    with pytest.raises(loop.NonFiniteLossError) as info:
        loop.main(cfg)
    message = str(info.value)
    assert 'iteration 10' in message and 'tasks in the batch' in message
    assert any(name in message for name in ('alpha', 'beta', 'gamma'))
    path, state = ckpt.latest_checkpoint(loop.run_dir_of(cfg) / 'checkpoints')
    assert state['iteration'] == 8 and path.name in message
    assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())


def test_bad_images_error_before_training_or_skip_and_list(tiny_config, tiny_pool):
    bad = tiny_pool.parent / 'data' / 'beta' / 'train' / 'y' / 'broken.png'
    bad.write_bytes(b'not a png at all')
    (tiny_pool.parent / 'data' / 'gamma' / 'val' / 'u' / 'empty.jpg').write_bytes(b'')
    cfg = tiny_config('bad')
    with pytest.raises(loop.BadImagesError) as info:
        loop.main(cfg)
    assert (
        'broken.png' in str(info.value)
        and 'empty.jpg' in str(info.value)
        and 'data.bad_images' in str(info.value)
    )
    assert not ckpt.list_checkpoints(loop.run_dir_of(cfg) / 'checkpoints')  # stopped before the first step
    cfg = tiny_config('skip', data={'bad_images': 'skip'}, schedule={'iterations': 4, 'warmup_iterations': 0})
    summary = loop.main(cfg)
    assert len(summary['skipped_images']) == 2 and any('broken.png' in s for s in summary['skipped_images'])
    assert 'broken.png' in (loop.run_dir_of(cfg) / 'log.txt').read_text()


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_uninterrupted(tiny_config, tmp_path):
    """SIGKILL (mid-step, mid-checkpoint-write) and restart the same command until it finishes."""
    ref = loop.main(tiny_config('ref', schedule={'iterations': 24, 'checkpoint_every': 2}))
    cfg = tiny_config('killed', schedule={'iterations': 24, 'checkpoint_every': 2})
    config_file = tmp_path / 'killed.yaml'
    config_file.write_text(yaml.safe_dump(to_dict(cfg)))
    ckpt_dir = loop.run_dir_of(cfg) / 'checkpoints'
    # 1) killed while writing the checkpoint of iteration 6: the temp file is complete, not renamed.
    r = run_training_cli(['--config', str(config_file)], {'MTDP_TRAINING_FAULT': 'save:6'})
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert [p.name for p in ckpt.list_checkpoints(ckpt_dir)] == ['ckpt-000000002.pt', 'ckpt-000000004.pt']
    assert any(_io.PARTIAL_MARK in p.name for p in ckpt_dir.iterdir())
    # 2) killed from outside at random moments (fixed test seed) once past a random iteration.
    rng = random.Random(0)
    for target in (8, 14):
        proc = subprocess.Popen(
            [sys.executable, '-m', 'training', '--config', str(config_file)],
            cwd=REPO_ROOT,
            env={**os.environ, 'OMP_NUM_THREADS': '1'},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            done = ckpt.list_checkpoints(ckpt_dir)
            if done and int(done[-1].name[5:14]) >= target:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.15))
        proc.kill()
        proc.wait()
        for p in ckpt.list_checkpoints(ckpt_dir):  # every visible checkpoint loads
            ckpt.load_checkpoint(p)
    r = run_training_cli(['--config', str(config_file)])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((loop.run_dir_of(cfg) / 'summary.json').read_text())
    assert summary['weights_sha256'] == ref['weights_sha256']
    assert not any(_io.PARTIAL_MARK in p.name for p in ckpt_dir.iterdir())


@pytest.mark.slow
def test_cli_resume_continues_a_stopped_run(tiny_config, monkeypatch):
    ref = loop.main(tiny_config('ref'))
    cfg = tiny_config('cli')
    monkeypatch.setattr(
        loop, '_fault_point', lambda d, it: os.kill(os.getpid(), signal.SIGTERM) if it == 5 else None
    )
    with pytest.raises(loop.TrainingInterrupted):
        loop.main(cfg)
    run_dir = loop.run_dir_of(cfg)
    r = run_training_cli(['--resume', str(run_dir)])
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((run_dir / 'summary.json').read_text())
    assert summary['resumed_from'] == 5 and summary['weights_sha256'] == ref['weights_sha256']
    assert 'resuming from' in (run_dir / 'log.txt').read_text()


def test_resume_refuses_changed_settings_and_keeps_metrics_unique(tiny_config, monkeypatch):
    cfg = tiny_config('change', schedule={'log_every': 1})

    def crash(d, iteration):  # dies after iteration 6, the last checkpoint being iteration 4
        if iteration == 6:
            raise RuntimeError('simulated crash')

    monkeypatch.setattr(loop, '_fault_point', crash)
    with pytest.raises(RuntimeError, match='simulated crash'):
        loop.main(cfg)
    monkeypatch.setattr(loop, '_fault_point', lambda d, it: None)
    changed = tiny_config('change', optim={'lr': 0.5, 'head_lr_mult': 2.0}, schedule={'log_every': 1})
    with pytest.raises(ConfigError, match=r'optim\.lr: 0\.01 -> 0\.5'):
        loop.main(changed)
    # More iterations and another log cadence are fine; the CSV then holds each iteration once.
    longer = tiny_config('change', schedule={'iterations': 14, 'log_every': 1})
    assert loop.main(longer)['resumed_from'] == 4
    with open(loop.run_dir_of(cfg) / 'metrics.csv') as f:
        its = [int(r['iteration']) for r in csv.DictReader(f) if r['name'] == 'train/loss']
    assert its == list(range(1, 15))


def test_resume_never_refuses_a_folder_with_checkpoints(tiny_config):
    loop.main(tiny_config('old'))
    with pytest.raises(ConfigError, match='run.resume is never'):
        loop.main(tiny_config('old', run={'resume': 'never'}))
    assert [p.name for p in ckpt.list_checkpoints(loop.run_dir_of(tiny_config('old')) / 'checkpoints')][
        -1
    ] == 'ckpt-000000012.pt'
