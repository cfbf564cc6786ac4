"""The ``mtdp`` command: every subcommand's help, and real runs of list, convert, export and push."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import mtdp_hub  # noqa: F401
from mtdp_hub.cli import main

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


def test_list(capsys):
    assert main(['list']) == 0
    out = capsys.readouterr().out
    assert 'mtdp_resnet50.mtdp22\tmtdp-hub/mtdp_resnet50.mtdp22' in out and 'mtdp_densenet121.mtdp22' in out


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

    monkeypatch.setattr('mtdp_hub.cli.hub.push_folder', bug)
    with pytest.raises(RuntimeError, match='a bug'):  # not swallowed: the traceback reaches the user
        main(['push', str(tmp_path), 'org/name'])
