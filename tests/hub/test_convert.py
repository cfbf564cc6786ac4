"""Original checkpoint -> timm keys + heads; bad checkpoints give errors naming the file and keys."""

import os
import pickle

import pytest
import timm
import torch
from safetensors.torch import save_file

import mtdp_hub
from mtdp_hub.convert import convert_mtdp_checkpoint
from mtdp_hub.errors import CheckpointError, UnsafeOutputError
from mtdp_hub.heads import load_heads
from mtdp_hub.state_dict import guess_architecture, read_state_dict, split_mtdp_checkpoint


def _load(name, path, **kwargs):
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)


def test_legacy_pickle_reads_with_weights_only(original_checkpoint):
    ckpt = original_checkpoint('densenet121')
    sd = read_state_dict(ckpt.path)
    assert 'features.features.conv0.weight' in sd and 'features.classifier.weight' in sd
    assert sd['heads.ulg_bonemarrow.linear.weight'].shape == (8, 1024, 1, 1)


@pytest.mark.parametrize(
    'arch,prefix', [('resnet50', 'conv1.weight'), ('densenet121', 'features.conv0.weight')]
)
def test_split_strips_prefix_drops_imagenet_classifier_keeps_heads(original_checkpoint, arch, prefix):
    ckpt = original_checkpoint(arch)
    backbone, heads = split_mtdp_checkpoint(read_state_dict(ckpt.path))
    assert prefix in backbone
    assert not any(k.startswith(('fc.', 'classifier.', 'heads.', 'features.features.')) for k in backbone)
    assert sorted(heads) == sorted(ckpt.model.heads)
    conv = ckpt.model.heads['ulg_lbtd_tissus'].linear
    assert torch.equal(heads['ulg_lbtd_tissus'].weight, conv.weight[:, :, 0, 0])
    assert torch.equal(heads['ulg_lbtd_tissus'].bias, conv.bias)
    assert guess_architecture(backbone) == arch


def test_converted_folder_keeps_heads_and_features(original_checkpoint, tmp_path):
    ckpt = original_checkpoint('resnet50')
    folder = convert_mtdp_checkpoint(ckpt.path, tmp_path / 'out')
    assert sorted(p.name for p in folder.iterdir()) == [
        'README.md',
        'config.json',
        'heads.safetensors',
        'model.safetensors',
    ]
    heads, classes = load_heads(folder / 'heads.safetensors')
    assert {k: h.out_features for k, h in heads.items()} == {
        'glomeruli_no_aug': 2,
        'ulg_bonemarrow': 8,
        'ulg_lbtd_tissus': 10,
    }
    model = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model(x)
        assert (feats - ckpt.reference(x)).abs().max() <= 1e-5
        # the converted Linear head gives the original 1x1-conv head's logits
        original_logits = ckpt.model.heads['ulg_bonemarrow'](ckpt.model.features(x))
        assert (heads['ulg_bonemarrow'](feats) - original_logits).abs().max() <= 1e-4
    assert 'ulg_bonemarrow' in (folder / 'README.md').read_text()


def test_wrong_architecture_is_named(original_checkpoint):
    ckpt = original_checkpoint('densenet121')
    with pytest.raises(CheckpointError) as info:
        _load('mtdp_resnet50', ckpt.path)
    msg = str(info.value)
    assert str(ckpt.path) in msg and 'densenet121' in msg and 'conv1.weight' in msg


@pytest.mark.parametrize('num_classes', [0, 5])
def test_missing_key_is_named_also_with_a_fresh_head(original_checkpoint, tmp_path, num_classes):
    ckpt = original_checkpoint('resnet50')
    sd = read_state_dict(ckpt.path)
    del sd['features.layer3.2.bn2.running_var']
    path = tmp_path / 'missing.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r'layer3\.2\.bn2\.running_var') as info:
        _load('mtdp_resnet50', path, num_classes=num_classes)
    assert str(path) in str(info.value)


def test_wrong_shape_is_named(original_checkpoint, tmp_path):
    ckpt = original_checkpoint('resnet50')
    sd = read_state_dict(ckpt.path)
    sd['features.layer1.0.conv2.weight'] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / 'shape.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r'layer1\.0\.conv2\.weight \(64, 64, 1, 1\)'):
        _load('mtdp_resnet50', path)


@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
@pytest.mark.parametrize('num_classes', [0, 5])
def test_truncated_file_names_the_file(original_checkpoint, tmp_path, suffix, num_classes):
    ckpt = original_checkpoint('resnet50')
    path = tmp_path / f'truncated{suffix}'
    if suffix == '.pth':
        data = ckpt.path.read_bytes()
    else:
        save_file(
            {k: v.contiguous() for k, v in split_mtdp_checkpoint(read_state_dict(ckpt.path))[0].items()},
            str(path),
        )
        data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        _load('mtdp_resnet50', path, num_classes=num_classes)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError, match='truncated'):
        read_state_dict(path)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, 'w'))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    with open(path, 'wb') as f:
        pickle.dump({'conv1.weight': _RunsCode(str(marker))}, f)
    with pytest.raises(CheckpointError, match='refused') as info:
        read_state_dict(path)
    assert str(path) in str(info.value)
    with pytest.raises(CheckpointError):
        _load('mtdp_resnet50', path)
    assert not os.path.exists(marker), 'nothing from the pickle may run'


def test_convert_refuses_a_timm_checkpoint(tmp_path):
    path = tmp_path / 'plain.safetensors'
    save_file(timm.create_model('resnet18').state_dict(), str(path))
    with pytest.raises(CheckpointError, match='not an original mtdp checkpoint'):
        convert_mtdp_checkpoint(path, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_error_types_are_exported():
    assert issubclass(mtdp_hub.CheckpointError, RuntimeError)


def test_unexpected_keys_are_named(original_checkpoint, tmp_path):
    ckpt = original_checkpoint('resnet50')
    sd = read_state_dict(ckpt.path)
    sd['features.layer5.0.conv1.weight'] = torch.zeros(1)
    path = tmp_path / 'extra.pth'
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r'Unexpected 1 keys: layer5\.0\.conv1\.weight') as info:
        _load('mtdp_resnet50', path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize('where', ['folder', 'above', 'file'])
def test_convert_never_writes_over_its_source_file(original_checkpoint, where):
    ckpt = original_checkpoint('resnet50')
    out = {'folder': ckpt.path.parent, 'above': ckpt.path.parent.parent, 'file': ckpt.path}[where]
    data = ckpt.path.read_bytes()
    with pytest.raises(UnsafeOutputError, match=ckpt.path.name):
        convert_mtdp_checkpoint(ckpt.path, out, overwrite=True)
    assert ckpt.path.read_bytes() == data


def _training_checkpoint(tmp_path):
    """A checkpoint as training/checkpoint.py writes it: ``RUN/checkpoints/ckpt-N.pt``, a dict of plain data."""
    path = tmp_path / 'runs' / 'r1' / 'checkpoints' / 'ckpt-000000004.pt'
    path.parent.mkdir(parents=True)
    state = {
        'iteration': 4,
        'model': {'backbone.conv1.weight': torch.zeros(2, 3, 1, 1), 'heads.alpha.weight': torch.zeros(2, 2)},
        'optimizer': {'state': {}, 'param_groups': []},
        'scheduler': {},
        'sampler': {'position': 32},
        'config': {'model': {'arch': 'resnet18'}},
        'tasks': [{'name': 'alpha', 'classes': ['a', 'b']}],
        'pool_markdown': '| task |',
    }
    torch.save(state, path)
    return path


def test_convert_points_a_training_checkpoint_to_training_export(tmp_path):
    path = _training_checkpoint(tmp_path)
    with pytest.raises(CheckpointError) as info:
        convert_mtdp_checkpoint(path, tmp_path / 'out')
    text = str(info.value)
    assert f'python -m training export --run {tmp_path / "runs" / "r1"} --checkpoint {path}' in text
    assert '\x1b' not in text and 'weights_only' not in text
    assert not (tmp_path / 'out').exists()


def test_torch_refusal_text_is_one_plain_reason(tmp_path):
    import numpy as np

    path = tmp_path / 'numpy.pth'
    torch.save({'conv1.weight': np.zeros(3)}, path)  # refused by weights_only: a numpy array
    with pytest.raises(CheckpointError) as info:
        convert_mtdp_checkpoint(path, tmp_path / 'out')
    text = str(info.value)
    assert str(path) in text and 'numpy' in text
    assert '\x1b' not in text and 'weights_only' not in text and '\n' not in text


@pytest.mark.parametrize('arch', ['resnet50', 'densenet121'])
def test_conversion_copies_every_backbone_value_bit_for_bit(original_checkpoint, tmp_path, arch):
    """model.safetensors holds every original backbone tensor unchanged (torch.equal, same dtype),
    under its name with the ``features.`` prefix of mtdp removed; nothing else is in it."""
    from safetensors.torch import load_file

    ckpt = original_checkpoint(arch)
    folder = convert_mtdp_checkpoint(ckpt.path, tmp_path / 'out')
    converted = load_file(folder / 'model.safetensors')
    original = {
        k.removeprefix('features.'): v
        for k, v in ckpt.model.state_dict().items()
        if k.startswith('features.') and not k.startswith(('features.fc.', 'features.classifier.'))
    }
    assert set(converted) == set(original)
    for name, value in original.items():
        assert converted[name].dtype == value.dtype and torch.equal(converted[name], value), name
