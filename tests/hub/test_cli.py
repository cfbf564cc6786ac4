"""The ``mtdp`` command: every subcommand's help, and real runs of list, convert, export and push."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import mtdp_hub  # noqa: F401
from mtdp_hub.cli import build_parser, main
from mtdp_hub.cli.options import PRECISION_CHOICES, TTA_CHOICES
from tests.conftest import REPO_ROOT

SUBCOMMANDS = ['list', 'convert', 'export', 'push', 'extract', 'evaluate']


@pytest.mark.parametrize('command', SUBCOMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, '--help'])
    assert info.value.code == 0
    assert 'usage: mtdp ' + command in capsys.readouterr().out


@pytest.mark.slow
def test_console_script_installed():
    script = Path(sys.executable).parent / 'mtdp'
    if not script.exists():
        pytest.skip('package not installed in this environment (pip install -e .)')
    out = subprocess.run([str(script), '--version'], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f'mtdp-hub {mtdp_hub.__version__}'


def _isolated_weight_places(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv('MTDP_CACHE_DIR', str(tmp_path / 'downloads'))
    monkeypatch.setenv('MTDP_WEIGHTS_DIR', str(tmp_path / 'weights'))
    (tmp_path / 'weights').mkdir()


def test_list_has_a_header_and_says_where_weights_are(capsys, monkeypatch, tmp_path):
    _isolated_weight_places(monkeypatch, tmp_path)
    original = tmp_path / 'weights' / 'resnet50-mh-best-191205-141200.pth'
    original.write_bytes(b'only its presence is listed; it is checked when loaded')
    assert main(['list']) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['MODEL', 'LOCAL', 'WEIGHTS', 'HUB', 'REPO', 'DESCRIPTION']
    rows = {line.split()[0]: line.split() for line in lines[1:3]}
    assert rows['mtdp_resnet50.mtdp22'][1:3] == [str(original), 'mtdp-hub/mtdp_resnet50.mtdp22']
    assert rows['mtdp_densenet121.mtdp22'][1:3] == ['no', 'mtdp-hub/mtdp_densenet121.mtdp22']


def test_list_without_local_weights_says_how_to_provide_them(capsys, monkeypatch, tmp_path):
    _isolated_weight_places(monkeypatch, tmp_path)
    assert main(['list']) == 0
    out = capsys.readouterr().out
    assert 'No weights found locally' in out and 'MTDP_WEIGHTS_DIR' in out and '--weights FILE' in out


@pytest.mark.parametrize('argv', [['--help'], ['--version'], ['list'], ['push', '--help']])
def test_help_version_and_list_import_no_torch(argv):
    code = (
        'import sys\n'
        'from mtdp_hub.cli import main\n'
        f'try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n'
        "print([m for m in ('torch', 'timm', 'mtdp_hub.features', 'mtdp_hub.evaluation') if m in sys.modules])\n"
    )
    env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT)}
    out = subprocess.run(
        [sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == '[]'


def _subparsers(parser):
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


@pytest.mark.parametrize('command', [None, 'list', 'convert', 'export', 'push'])
def test_every_option_has_help_without_rest_markup_and_defaults_show(command):
    parser = build_parser()
    if command:
        parser = _subparsers(parser)[command]
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.help, f'{command or "mtdp"}: {action.dest} has no help text'
    text = parser.format_help()
    assert '``' not in text and ':func:' not in text and ':mod:' not in text
    if command == 'export':
        assert '(default: 0)' in text  # --seed
        assert '(default: None)' not in text and '(default: False)' not in text


def test_option_choices_are_those_the_features_code_accepts():
    from mtdp_hub.features.extractor import TTA_VIEWS
    from mtdp_hub.features.runtime import PRECISIONS

    assert TTA_CHOICES == tuple(TTA_VIEWS) and PRECISION_CHOICES == tuple(PRECISIONS)


def test_convert_export_push(original_checkpoint, tmp_path, capsys):
    ckpt = original_checkpoint('resnet50')
    assert main(['convert', str(ckpt.path), '--out', str(tmp_path / 'conv')]) == 0
    out = capsys.readouterr().out
    assert 'sha256  ' in out and 'model.safetensors' in out and 'heads.safetensors' in out

    assert main(['export', f'local-dir:{tmp_path / "conv"}', '--out', str(tmp_path / 'copy')]) == 0
    capsys.readouterr()
    a = timm.create_model(f'local-dir:{tmp_path / "copy"}', pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (a(x) - ckpt.reference(x)).abs().max() <= 1e-5
    assert json.loads((tmp_path / 'copy' / 'config.json').read_text())['architecture'] == 'resnet50'

    assert main(['push', str(tmp_path / 'conv'), 'org/name']) == 0
    out = capsys.readouterr().out
    assert 'dry run' in out and 'heads.safetensors' in out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    assert main(['convert', str(bad), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.startswith('mtdp convert: error:')
    assert not (tmp_path / 'o').exists()


def test_input_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, capsys, monkeypatch):
    assert main(['export', 'no_such_model_xyz', '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and "unknown model 'no_such_model_xyz'" in err
    assert (
        main(
            [
                'extract',
                '--model',
                'random:resnet18',
                '--input',
                str(tmp_path / 'ghost'),
                '--output',
                str(tmp_path / 'f.safetensors'),
            ]
        )
        == 2
    )
    assert 'no such input' in capsys.readouterr().err

    def bug(*args, **kwargs):
        raise RuntimeError('a bug, not bad input')

    monkeypatch.setattr('mtdp_hub.push.push_folder', bug)
    with pytest.raises(RuntimeError, match='a bug'):  # not swallowed: the traceback reaches the user
        main(['push', str(tmp_path), 'org/name'])


def test_export_random_model_is_recorded_as_random(tmp_path, capsys):
    assert main(['export', 'random:resnet18', '--seed', '3', '--out', str(tmp_path / 'r')]) == 0
    cfg = json.loads((tmp_path / 'r' / 'config.json').read_text())['pretrained_cfg']
    assert not {'license', 'paper_ids', 'test_input_size', 'hf_hub_id', 'tag'} & set(cfg)
    card = (tmp_path / 'r' / 'README.md').read_text()
    assert 'random initial weights' in card and 'seed 3' in card and 'pathology' not in card
    assert f'local-dir:{tmp_path / "r"}' in card
    model = timm.create_model(f'local-dir:{tmp_path / "r"}', pretrained=True)
    torch.manual_seed(3)
    fresh = timm.create_model('resnet18', num_classes=0)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh.state_dict().values()))


def test_export_random_model_refuses_weights(tmp_path, capsys):
    weights = tmp_path / 'w.safetensors'
    weights.write_bytes(b'x')
    assert main(['export', 'random:resnet18', '--weights', str(weights), '--out', str(tmp_path / 'r')]) == 2
    assert 'random' in capsys.readouterr().err and not (tmp_path / 'r').exists()


def test_export_from_an_unreachable_hub_fails_at_once_with_the_offline_hint(closed_hub, tmp_path, capsys):
    assert main(['export', 'hf-hub:org/model', '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert closed_hub in err and 'HF_HUB_OFFLINE=1' in err and err.count('\n') == 1
    assert not (tmp_path / 'o').exists()


def test_errors_are_printed_without_terminal_codes(tmp_path, capsys, monkeypatch):
    from mtdp_hub.errors import CheckpointError

    def coloured(*args, **kwargs):
        raise CheckpointError('x.pth: \x1b[1mdo this only if you trust it\x1b[0m')

    monkeypatch.setattr('mtdp_hub.convert.convert_mtdp_checkpoint', coloured)
    assert main(['convert', str(tmp_path / 'x.pth'), '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert '\x1b' not in err and 'do this only if you trust it' in err


def test_export_of_uncached_hub_weights_offline_is_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    assert main(['export', 'hf-hub:org/none', '--out', str(tmp_path / 'o')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'hf-hub:org/none' in err and 'HF_HUB_OFFLINE is set' in err


def test_export_with_a_weight_file_claims_nothing_of_the_registry_row(tmp_path, capsys):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    mine = timm.create_model('resnet18', num_classes=0)
    save_file(mine.state_dict(), str(tmp_path / 'mine.safetensors'))
    argv = [
        'export',
        'resnet18',
        '--weights',
        str(tmp_path / 'mine.safetensors'),
        '--out',
        str(tmp_path / 'o'),
    ]
    assert main(argv) == 0
    cfg = json.loads((tmp_path / 'o' / 'config.json').read_text())['pretrained_cfg']
    assert not {'license', 'paper_ids', 'test_input_size'} & set(cfg)
    card = (tmp_path / 'o' / 'README.md').read_text()
    assert 'the weight file `mine.safetensors`' in card and 'Licence: unknown' in card
    reloaded = timm.create_model(f'local-dir:{tmp_path / "o"}', pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), mine.state_dict().values()))
