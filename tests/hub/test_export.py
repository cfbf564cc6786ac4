"""Exported folders reload through timm (local-dir:, offline hf-hub:) and carry no weight sources."""

import json
import os
import subprocess
import sys

import pytest
import timm
import torch

import mtdp_hub  # noqa: F401
from mtdp_hub.convert import convert_mtdp_checkpoint
from mtdp_hub.errors import OutputExistsError, UnsafeOutputError
from mtdp_hub.export import export_folder
from tests.conftest import REPO_ROOT, populate_hf_cache

SOURCE_KEYS = ('url', 'file', 'hf_hub_id', 'hf_hub_filename', 'source', 'state_dict')


@pytest.fixture
def resnet_folder(original_checkpoint, tmp_path):
    ckpt = original_checkpoint('resnet50')
    return ckpt, convert_mtdp_checkpoint(ckpt.path, tmp_path / 'mtdp_resnet50')


def test_config_is_plain_resnet50_without_sources(resnet_folder):
    _, folder = resnet_folder
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == 'resnet50' and config['num_classes'] == 0
    cfg = config['pretrained_cfg']
    assert not set(SOURCE_KEYS) & set(cfg)
    assert (
        cfg['mean'] == [0.485, 0.456, 0.406] and cfg['crop_pct'] == 1.0 and cfg['interpolation'] == 'bilinear'
    )


def test_local_dir_reload_equal(resnet_folder):
    ckpt, folder = resnet_folder
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg['input_size'] == (3, 224, 224) and data_cfg['crop_pct'] == 1.0


@pytest.mark.slow
def test_plain_timm_loads_resnet_from_offline_hf_cache_in_fresh_process(resnet_folder, tmp_path):
    ckpt, folder = resnet_folder
    populate_hf_cache(tmp_path / 'hf', 'someorg/mtdp_resnet50', folder)
    x = torch.randn(1, 3, 64, 64)
    torch.save({'x': x, 'ref': ckpt.reference(x)}, tmp_path / 'io.pt')
    code = (
        'import sys, torch, timm\n'
        "m = timm.create_model('hf-hub:someorg/mtdp_resnet50', pretrained=True).eval()\n"
        f'io = torch.load({str(tmp_path / "io.pt")!r})\n'
        "with torch.no_grad(): d = (m(io['x']) - io['ref']).abs().max().item()\n"
        "assert 'mtdp_hub' not in sys.modules\n"
        "print('DIFF', d, type(m).__name__)\n"
    )
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(tmp_path / 'hf'), 'PYTHONPATH': ''}
    out = subprocess.run(
        [sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr
    _, diff, cls = out.stdout.split()
    assert float(diff) <= 1e-5 and cls == 'ResNet'


def test_densenet_folder_names_mtdp_arch_and_says_import(original_checkpoint, tmp_path):
    ckpt = original_checkpoint('densenet121')
    folder = convert_mtdp_checkpoint(ckpt.path, tmp_path / 'dn')
    assert json.loads((folder / 'config.json').read_text())['architecture'] == 'mtdp_densenet121'
    card = (folder / 'README.md').read_text()
    assert 'import mtdp_hub' in card and '<!-- include' not in card and 'Camelyon16' in card
    populate_hf_cache(tmp_path / 'hf', 'someorg/dn', folder)
    model = timm.create_model('hf-hub:someorg/dn', pretrained=True, cache_dir=tmp_path / 'hf').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_export_never_clobbers_or_leaves_partial_folders(tmp_path, monkeypatch):
    model = timm.create_model('resnet18', num_classes=0)
    (tmp_path / 'out').mkdir()
    (tmp_path / 'out' / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError):
        export_folder(model, tmp_path / 'out')
    assert (tmp_path / 'out' / 'keep.txt').read_text() == 'mine'

    def boom(*args, **kwargs):
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr('mtdp_hub.export.save_heads', boom)
    with pytest.raises(OSError):
        export_folder(model, tmp_path / 'out', heads={'t': torch.nn.Linear(512, 2)}, overwrite=True)
    assert (tmp_path / 'out' / 'keep.txt').exists(), 'a failed export keeps the old folder'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['out']


def test_generated_card_for_trained_backbone(tmp_path):
    model = timm.create_model('resnet18', num_classes=0)
    folder = export_folder(model, tmp_path / 'run', card_extra='## Run\n\nloss 0.1')
    card = (folder / 'README.md').read_text()
    assert card.startswith('---\nlibrary_name: timm') and card.rstrip().endswith('loss 0.1')
    assert 'resnet18' in card


def test_repo_cards_exist_beside_package():
    assert (REPO_ROOT / 'model_cards' / 'mtdp_resnet50.md').is_file()


def test_export_never_replaces_the_folder_its_model_came_from(tmp_path):
    src = export_folder(timm.create_model('resnet18', num_classes=0), tmp_path / 'models' / 'src')
    model = timm.create_model(f'local-dir:{src}', pretrained=True)
    for out in (src, tmp_path / 'models'):
        with pytest.raises(UnsafeOutputError, match='src'):
            export_folder(model, out, overwrite=True)
    assert (src / 'model.safetensors').is_file()


def test_export_first_recovers_a_folder_lost_in_a_killed_swap(tmp_path):
    done = subprocess.run(
        [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
    )
    old = tmp_path / f'.m.partial-{int(done.stdout)}-00aa.old'
    old.mkdir()
    (old / 'README.md').write_text('the only copy')
    with pytest.raises(OutputExistsError):
        export_folder(timm.create_model('resnet18', num_classes=0), tmp_path / 'm')
    assert (tmp_path / 'm' / 'README.md').read_text() == 'the only copy'


def test_copy_keeps_the_source_licence_in_config_and_card_alike(tmp_path):
    model = timm.create_model('resnet18', num_classes=0)  # timm's resnet18.a1_in1k row: apache-2.0
    folder = export_folder(model, tmp_path / 'copy', about='A copy of resnet18.')
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    card = (folder / 'README.md').read_text()
    assert cfg['license'] == model.pretrained_cfg['license']
    assert f'license: {cfg["license"]}\n' in card and f'Licence: `{cfg["license"]}`' in card
    assert 'A copy of resnet18.' in card and 'pathology' not in card and 'histology' not in card
    assert f"'local-dir:{folder}'" in card


def test_trained_weights_keep_only_architecture_and_preprocessing(tmp_path):
    model = timm.create_model('resnet18', num_classes=0)
    folder = export_folder(model, tmp_path / 'new', trained=True, about='Trained here.')
    cfg = json.loads((folder / 'config.json').read_text())['pretrained_cfg']
    assert not {'license', 'paper_ids', 'paper_name', 'test_input_size', 'origin_url', 'tag'} & set(cfg)
    assert cfg['input_size'] == list(model.pretrained_cfg['input_size'])
    card = (folder / 'README.md').read_text()
    assert 'license: other\n' in card and 'Licence: unknown' in card and 'apache' not in card


def test_a_stated_licence_is_written_once_consistently(tmp_path):
    model = timm.create_model('resnet18', num_classes=0)
    folder = export_folder(model, tmp_path / 'new', trained=True, license='cc-by-4.0')
    assert json.loads((folder / 'config.json').read_text())['pretrained_cfg']['license'] == 'cc-by-4.0'
    card = (folder / 'README.md').read_text()
    assert 'license: cc-by-4.0\n' in card and card.count('apache') == 0
