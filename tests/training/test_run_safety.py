"""Run safety: checkpoints that cannot run code and are verified, pruning, changed pools, finished
runs, fewer iterations, late signals and one run per folder."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

import training.checkpoint as ckpt
import training.loop as loop
from mtdp_hub import _io
from mtdp_hub.errors import CheckpointError, MtdpError
from training.config import ConfigError


class _Evil:
    """Unpickling this runs code (creates ``marker``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f'open({self.marker!r}, "w").close()',))


def _write_evil(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({'iteration': 4, 'payload': _Evil(marker)}, path)
    ckpt.checksum_path(path).write_text(f'{_io.sha256_file(path)}  {path.name}\n')


def test_a_checkpoint_asking_to_run_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'checkpoints' / 'ckpt-000000004.pt'
    _write_evil(path, marker)
    with pytest.raises(CheckpointError, match='ckpt-000000004.pt'):
        ckpt.load_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match='ckpt-000000004.pt'):
        ckpt.latest_checkpoint(path.parent, log=lambda m: None)
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_asking_to_run_code(tiny_config):
    cfg = tiny_config('evil')
    marker = loop.run_dir_of(cfg).parent / 'pwned'
    _write_evil(loop.run_dir_of(cfg) / 'checkpoints' / 'ckpt-000000004.pt', marker)
    with pytest.raises(CheckpointError, match='ckpt-000000004.pt'):
        loop.main(cfg)
    assert not marker.exists()


def test_real_checkpoints_load_as_plain_data_and_a_bit_flip_is_refused(tiny_config):
    cfg = tiny_config('plain', schedule={'iterations': 4, 'warmup_iterations': 2})
    loop.main(cfg)
    path = ckpt.list_checkpoints(loop.run_dir_of(cfg) / 'checkpoints')[-1]
    state = torch.load(path, map_location='cpu', weights_only=True)  # plain data only
    assert state['iteration'] == 4 and ckpt.checksum_path(path).is_file()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf'{path.name}.*SHA-256'):
        ckpt.load_checkpoint(path)


def test_pruning_keeps_the_new_checkpoint_over_unreadable_newer_ones(tmp_path):
    (tmp_path / 'ckpt-000000999.pt').write_bytes(b'garbage')
    for it in (1, 2):
        ckpt.save_checkpoint({'iteration': it, 'w': torch.ones(2)}, tmp_path, it, keep=1)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert 'ckpt-000000002.pt' in names and 'ckpt-000000001.pt' not in names
    warnings = []
    path, state = ckpt.latest_checkpoint(tmp_path, log=warnings.append)
    assert path.name == 'ckpt-000000002.pt' and state['iteration'] == 2
    assert any('ckpt-000000999.pt' in w for w in warnings)


def test_resume_over_only_unreadable_checkpoints_is_an_error(tiny_config):
    cfg = tiny_config('broken')
    folder = loop.run_dir_of(cfg) / 'checkpoints'
    folder.mkdir(parents=True)
    (folder / 'ckpt-000000004.pt').write_bytes(b'garbage')
    (folder / 'ckpt-000000008.pt').write_bytes(b'')
    with pytest.raises(CheckpointError, match='ckpt-000000004.pt.*ckpt-000000008.pt|ckpt-000000008.pt.*4'):
        loop.main(cfg)
    assert (
        not (loop.run_dir_of(cfg) / 'metrics.csv').exists()
        or 'train/loss' not in (loop.run_dir_of(cfg) / 'metrics.csv').read_text()
    )


def test_resume_refuses_renamed_classes_and_changed_image_counts(tiny_config, tiny_pool):
    cfg = tiny_config('pool', schedule={'iterations': 4, 'warmup_iterations': 2})
    loop.main(cfg)
    longer = tiny_config('pool', schedule={'iterations': 8, 'warmup_iterations': 2})
    alpha = tiny_pool.parent / 'data' / 'alpha'
    for split in ('train', 'val'):
        os.rename(alpha / split / 'a', alpha / split / 'c')  # classes [a, b] -> [b, c]: labels would swap
    with pytest.raises(ConfigError, match=r"alpha.*\['a', 'b'\].*\['b', 'c'\]"):
        loop.main(longer)
    for split in ('train', 'val'):
        os.rename(alpha / split / 'c', alpha / split / 'a')
    extra = tiny_pool.parent / 'data' / 'beta' / 'train' / 'x'
    (extra / 'p0_900.png').write_bytes((extra / 'p0_000.png').read_bytes())
    with pytest.raises(ConfigError, match=r'beta.*12.*13'):
        loop.main(longer)


def test_checkpoint_write_failing_inside_torch_save_is_a_checkpoint_write_error(tmp_path, monkeypatch):
    ckpt.save_checkpoint({'iteration': 1, 'w': torch.ones(4)}, tmp_path, 1)
    before = (tmp_path / 'ckpt-000000001.pt').read_bytes()

    def full_disk(obj, f):
        f.write(b'partial')
        raise RuntimeError('[enforce fail at inline_container.cc] . unexpected pos 123 vs 456')

    monkeypatch.setattr(ckpt.torch, 'save', full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match='unexpected pos.*previous checkpoints are intact'):
        ckpt.save_checkpoint({'iteration': 2, 'w': torch.zeros(4)}, tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith('.pt')) == ['ckpt-000000001.pt']
    assert not [p for p in tmp_path.iterdir() if _io.PARTIAL_MARK in p.name]
    assert (tmp_path / 'ckpt-000000001.pt').read_bytes() == before


def _rows(cfg):
    with open(loop.run_dir_of(cfg) / 'metrics.csv') as f:
        return [(int(r['iteration']), r['name']) for r in csv.DictReader(f)]


def test_finished_run_started_again_keeps_metrics_unique_and_fewer_iterations_refused(tiny_config):
    cfg = tiny_config('done', schedule={'iterations': 6, 'warmup_iterations': 2})
    first = loop.main(cfg)
    rows = _rows(cfg)
    assert any(name.startswith('val/') for _, name in rows)
    again = loop.main(cfg)
    assert _rows(cfg) == rows  # no duplicated (iteration, name)
    assert again['metrics'] == first['metrics'] and again['weights_sha256'] == first['weights_sha256']
    shorter = tiny_config('done', schedule={'iterations': 4, 'warmup_iterations': 2})
    with pytest.raises(ConfigError, match=r'iterations.*4.*6|6.*iterations.*4'):
        loop.main(shorter)
    assert _rows(cfg) == rows


def test_signal_during_final_validation_stops_the_run(tiny_config, monkeypatch):
    cfg = tiny_config('late', schedule={'iterations': 4, 'warmup_iterations': 2})
    real = loop.validate

    def validate(model, pool, cfg_, d, amp, iteration, monitor):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(model, pool, cfg_, d, amp, iteration, monitor)

    monkeypatch.setattr(loop, 'validate', validate)
    with pytest.raises(loop.TrainingInterrupted) as info:
        loop.main(cfg)
    assert info.value.signum == signal.SIGTERM and info.value.iteration == 4
    assert info.value.path.name == 'ckpt-000000004.pt'
    assert not (loop.run_dir_of(cfg) / 'summary.json').exists()
    monkeypatch.setattr(loop, 'validate', real)
    summary = loop.main(cfg)
    assert summary['resumed_from'] == 4 and (loop.run_dir_of(cfg) / 'summary.json').exists()
    assert len(_rows(cfg)) == len(set(_rows(cfg)))


def test_a_run_folder_is_locked_while_a_run_uses_it(tiny_config):
    cfg = tiny_config('locked', schedule={'iterations': 2, 'warmup_iterations': 1})
    run_dir = loop.run_dir_of(cfg)
    run_dir.mkdir(parents=True)
    lock = run_dir / '.lock'
    lock.write_text(f'{os.getpid()} {socket.gethostname()}')  # a live holder
    with pytest.raises(MtdpError, match=rf'{run_dir}.*{os.getpid()}'):
        loop.main(cfg)
    assert lock.exists() and not ckpt.list_checkpoints(run_dir / 'checkpoints')
    dead = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    )
    lock.write_text(f'{int(dead.stdout)} {socket.gethostname()}')  # its process died: taken over
    assert loop.main(cfg)['iterations'] == 2
    assert not lock.exists()
