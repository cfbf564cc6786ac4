"""Weights whose values cannot be right are refused, naming the file and the keys."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from mtdp_hub.errors import CheckpointError
from mtdp_hub.state_dict import checkpoint_filter_fn, read_state_dict


@pytest.fixture(scope='module')
def model():
    return timm.create_model('resnet18', num_classes=0)


def _bad(model, case):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    if case == 'int8':
        sd['conv1.weight'] = sd['conv1.weight'].to(torch.int8)
    elif case == 'bool':
        sd['layer1.0.bn1.bias'] = sd['layer1.0.bn1.bias'] > 0
    elif case == 'nan':
        sd['conv1.weight'][0, 0, 0, 0] = float('nan')
    elif case == 'inf':
        sd['layer1.0.bn1.running_mean'][0] = float('inf')
    else:
        sd['layer1.0.bn1.running_var'][0] = -1.0
    return sd


CASES = {
    'int8': 'conv1.weight',
    'bool': 'layer1.0.bn1.bias',
    'nan': 'conv1.weight',
    'inf': 'layer1.0.bn1.running_mean',
    'negvar': 'layer1.0.bn1.running_var',
}


@pytest.mark.parametrize('case', CASES)
def test_filter_refuses_bad_values(model, case):
    model.pretrained_cfg = {**model.pretrained_cfg, 'file': '/weights/w.safetensors'}
    with pytest.raises(CheckpointError, match=rf'/weights/w\.safetensors.*{CASES[case]}'):
        checkpoint_filter_fn(_bad(model, case), model)


def test_filter_keeps_integer_buffers(model):
    sd = checkpoint_filter_fn(model.state_dict(), model)
    assert sd['bn1.num_batches_tracked'].dtype == torch.int64


@pytest.mark.parametrize('case', CASES)
def test_read_state_dict_refuses_bad_values(model, tmp_path, case):
    path = tmp_path / 'w.safetensors'
    save_file({k: v.contiguous() for k, v in _bad(model, case).items()}, str(path))
    with pytest.raises(CheckpointError, match=rf'w\.safetensors.*{CASES[case]}'):
        read_state_dict(path)
