"""A heads file whose metadata does not match its tensors is refused, naming the file and the task."""

import json

import pytest
import torch
from safetensors.torch import save_file

from mtdp_hub.errors import CheckpointError
from mtdp_hub.heads import HEADS_FORMAT, load_heads


def _write(path, tensors, tasks):
    save_file(tensors, str(path), metadata={'format': HEADS_FORMAT, 'tasks': json.dumps(tasks)})
    return path


GOOD = {'t.weight': torch.zeros(2, 4), 't.bias': torch.zeros(2)}


@pytest.mark.parametrize(
    'tensors, task',
    [
        ({}, {'name': 't', 'num_classes': 2, 'classes': []}),
        (
            {'t.weight': torch.zeros(2, 4), 't.bias': torch.zeros(3)},
            {'name': 't', 'num_classes': 2, 'classes': []},
        ),
        (GOOD, {'name': 't', 'num_classes': 3, 'classes': []}),
        (GOOD, {'name': 't', 'num_classes': 2, 'classes': ['a', 'b', 'c']}),
        (
            {'t.weight': torch.full((2, 4), float('nan')), 't.bias': torch.zeros(2)},
            {'name': 't', 'num_classes': 2},
        ),
        ({'t.weight': torch.zeros(2, 4, 1), 't.bias': torch.zeros(2)}, {'name': 't', 'num_classes': 2}),
    ],
    ids=['missing', 'bias', 'num_classes', 'classes', 'nan', 'ndim'],
)
def test_inconsistent_heads_are_refused(tmp_path, tensors, task):
    path = _write(tmp_path / 'heads.safetensors', tensors or {'other': torch.zeros(1)}, [task])
    with pytest.raises(CheckpointError, match=r"heads\.safetensors.*'t'"):
        load_heads(path)


def test_consistent_heads_load(tmp_path):
    path = _write(
        tmp_path / 'heads.safetensors', GOOD, [{'name': 't', 'num_classes': 2, 'classes': ['a', 'b']}]
    )
    heads, classes = load_heads(path)
    assert heads['t'].out_features == 2 and classes == {'t': ['a', 'b']}
