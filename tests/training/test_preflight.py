"""python -m training fails early and says so in log.txt: ImageNet weights and the run folder are
checked before the image scan, workers are capped at the CPUs, a missing tensorboard is said, progress
bars stay out of captured logs, and the keys --set accepts are listed with their defaults."""

from __future__ import annotations

import sys
import time

import pytest

from mtdp_hub.features import runtime
from training import __main__ as cli
from training import loop, preflight
from training.config import Config, ConfigError, config_keys
from training.data import scan_pool
from training.model import WeightsUnavailableError
from training.monitor import Monitor
from training.pool import load_pool


def no_scan(*args, **kwargs):
    raise AssertionError('the image scan ran before the check')


def test_missing_imagenet_weights_offline_fail_in_seconds_before_the_scan(tiny_config, monkeypatch):
    monkeypatch.setattr(preflight.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(loop, 'scan_pool', no_scan)
    cfg = tiny_config(
        model={'arch': 'test_resnet', 'init': 'imagenet', 'imagenet_weights': 'test_resnet.r160_in1k'},
        data={'scan_images': True},
    )
    assert preflight.weights_cached('test_resnet.r160_in1k') is False and not preflight.hub_reachable()
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as e:
        loop.main(cfg)
    assert time.monotonic() - t0 < 10
    message = str(e.value)
    assert "'test_resnet.r160_in1k'" in message and 'HF_HUB_OFFLINE' in message
    for fix in ('--set model.init=random', 'model.if_weights_missing=random', 'model.imagenet_weights='):
        assert fix in message
    assert f'error: {message}' in (loop.run_dir_of(cfg) / 'log.txt').read_text()


def test_missing_imagenet_weights_fall_back_to_random_when_asked(tiny_config, monkeypatch):
    monkeypatch.setattr(preflight.constants, 'HF_HUB_OFFLINE', True)
    cfg = tiny_config(
        model={
            'arch': 'test_resnet',
            'init': 'imagenet',
            'imagenet_weights': 'test_resnet.r160_in1k',
            'if_weights_missing': 'random',
        },
        schedule={'iterations': 2, 'warmup_iterations': 1, 'bn_recalibration_batches': 1},
    )
    loop.main(cfg)
    log = (loop.run_dir_of(cfg) / 'log.txt').read_text()
    assert 'starting from RANDOM weights (model.if_weights_missing: random)' in log


def test_an_unwritable_run_folder_is_named_before_anything_runs(tiny_config, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, 'scan_pool', no_scan)
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    cfg = tiny_config(run={'output_dir': str(blocker / 'runs')}, data={'scan_images': True})
    with pytest.raises(
        preflight.RunFolderError, match='cannot write the run folder .*a_file/runs/run.*run.output_dir'
    ):
        loop.main(cfg)


def test_an_unexpected_error_goes_into_log_txt_with_its_traceback(tiny_config, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError('boom in re-calibration')

    monkeypatch.setattr(loop, 'recalibrate', boom)
    cfg = tiny_config()
    with pytest.raises(RuntimeError):
        loop.main(cfg)
    log = (loop.run_dir_of(cfg) / 'log.txt').read_text()
    assert 'Traceback (most recent call last)' in log and 'RuntimeError: boom in re-calibration' in log


def test_the_cli_prints_an_error_once_and_log_txt_has_it(tiny_pool, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(preflight.constants, 'HF_HUB_OFFLINE', True)
    args = ['--pool', str(tiny_pool), '--set', f'run.output_dir={tmp_path / "runs"}', '--set', 'run.name=x']
    args += ['--set', 'model.arch=test_resnet', '--set', 'model.imagenet_weights=test_resnet.r160_in1k']
    args += ['--set', 'run.device=cpu', '--set', 'run.tensorboard=false']
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count('error: ImageNet weights') == 1
    assert 'error: ImageNet weights' in (tmp_path / 'runs' / 'x' / 'log.txt').read_text()


def test_workers_are_capped_at_the_cpus_available(monkeypatch):
    monkeypatch.setattr(runtime, 'available_cpus', lambda: 3)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    lines = []
    cfg = Config()
    cfg.data.num_workers = 8
    capped = loop._cap_workers(cfg, lines.append)
    assert capped.data.num_workers == 3 and cfg.data.num_workers == 8
    assert lines == ['data.num_workers 8 capped at 3: the CPUs available']
    assert loop._cap_workers(capped, lines.append) is capped and len(lines) == 1  # under the cap: silent
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '2')  # torchrun: the CPUs are shared by the local ranks
    assert loop._cap_workers(cfg, lines.append).data.num_workers == 1
    assert lines[-1] == 'data.num_workers 8 capped at 1: the CPUs available to each of 2 local ranks'


def test_missing_tensorboard_is_a_warning_in_the_console_and_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'torch.utils.tensorboard', None)  # import fails as when not installed
    monitor = Monitor(tmp_path, True, 0, 10, progress=False, tensorboard=True)
    monitor.close()
    warning = 'WARNING: run.tensorboard is true but the tensorboard package is not installed'
    assert warning in capsys.readouterr().out and warning in (tmp_path / 'log.txt').read_text()


def test_progress_bars_stay_out_of_captured_output(tiny_pool, tmp_path, capfd):
    """stderr is not a terminal here: no bar, no carriage returns (the log lines stay)."""
    monitor = Monitor(tmp_path, True, 0, 10, progress=True, tensorboard=False)
    monitor.progress(5, 0.5, 100.0)
    monitor.close()
    scan_pool(load_pool(tiny_pool), ['train'], progress=True)
    out, err = capfd.readouterr()
    assert '\r' not in out + err and 'iteration 5: loss 0.5000' in out


def test_keys_lists_every_config_key_with_its_default(capsys):
    assert cli.main(['keys']) == 0
    out = capsys.readouterr().out
    keys = config_keys()
    assert len(keys) > 30
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    for key, default, _ in keys:
        shown = (
            'null' if default is None else str(default).lower() if isinstance(default, bool) else str(default)
        )
        assert rows[key] == shown
    line = next(x for x in out.splitlines() if x.split()[:1] == ['schedule.bn_recalibration_batches'])
    assert line.split()[1] == '20' and '0 = no re-calibration' in line
    with pytest.raises(SystemExit) as e:
        cli.main(['--help'])
    assert e.value.code == 0
    assert 'schedule.bn_recalibration_batches' in capsys.readouterr().out


def test_the_scan_command_caps_its_workers_too(tiny_pool, monkeypatch, capsys):
    monkeypatch.setattr(runtime, 'available_cpus', lambda: 1)
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    assert cli.main(['scan', '--pool', str(tiny_pool), '--splits', 'train', '--workers', '3']) == 0
    captured = capsys.readouterr()
    assert '--workers 3 capped at 1: the CPUs available' in captured.err
    assert '44 images checked in 3 tasks, 0 undecodable' in captured.out


def test_a_refused_resume_is_written_to_log_txt(tiny_config):
    short = {'iterations': 2, 'warmup_iterations': 1, 'checkpoint_every': 1, 'bn_recalibration_batches': 1}
    loop.main(tiny_config(schedule=short))
    changed = tiny_config(schedule=short, optim={'lr': 0.5})
    with pytest.raises(ConfigError, match='was trained with other settings') as e:
        loop.main(changed)
    assert f'error: {e.value}' in (loop.run_dir_of(changed) / 'log.txt').read_text()
