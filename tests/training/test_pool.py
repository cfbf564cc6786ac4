"""Pools: folder and datasets tasks; every validation error names the task, before training."""

from __future__ import annotations

import pytest

from training.pool import PoolError, load_pool

from .conftest import write_task


def test_folder_pool_names_classes_sizes_and_groups(tiny_pool):
    pool = load_pool(tiny_pool)
    assert pool.names == ['alpha', 'beta', 'gamma']
    assert [t.classes for t in pool.tasks] == [['a', 'b'], ['x', 'y', 'z'], ['u', 'v']]
    assert pool.sizes(['train']) == [12, 12, 20] and pool.sizes(['train', 'val']) == [18, 18, 24]
    beta = pool.tasks[1]
    assert beta.splits['train'].labels == [0] * 4 + [1] * 4 + [2] * 4
    assert set(beta.splits.keys()) == {'train', 'val'}  # a missing test split is fine


def test_class_subsets_groups_and_trailing_slash(tmp_path):
    write_task(tmp_path / 'crc', {'train': {'AC': 3, 'H': 3, 'S': 3}, 'val': {'AC': 1, 'H': 1, 'S': 1}})
    pool = load_pool(
        {
            'tasks': [
                {'name': 'bin', 'root': str(tmp_path / 'crc'), 'classes': ['H', 'AC'], 'groups': 'prefix'},
                {'root': str(tmp_path / 'crc') + '/'},
            ]
        }
    )
    assert pool.names == ['bin', 'crc']
    assert pool.tasks[0].classes == ['H', 'AC'] and len(pool.tasks[0].splits['train']) == 6
    assert pool.tasks[0].splits['train'].labels == [0, 0, 0, 1, 1, 1]
    assert pool.tasks[0].splits['train'].groups == ['p0', 'p1', 'p2'] * 2


def test_datasets_imagefolder_source(tmp_path):
    pytest.importorskip('datasets')
    write_task(tmp_path / 'hf', {'train': {'cat': 3, 'dog': 3}, 'validation': {'cat': 2, 'dog': 2}})
    pool = load_pool(
        {'tasks': [{'name': 'pets', 'hf': {'path': 'imagefolder', 'data_dir': str(tmp_path / 'hf')}}]}
    )
    task = pool.tasks[0]
    assert task.classes == ['cat', 'dog'] and len(task.splits['train']) == 6 and len(task.splits['val']) == 4
    im = task.load('val', 3)
    assert im.mode == 'RGB' and im.size == (40, 32)


@pytest.mark.parametrize(
    'case, message',
    [
        ('unknown_key', r"task 'alpha': unknown keys \['rooot'\]"),
        ('missing_root', r"task 'ghost': task folder .*ghost does not exist"),
        ('duplicate', r"duplicate task names \['alpha'\]"),
        ('val_only_class', r"task 'alpha': classes \['c'\] appear in split 'val' but not in the training"),
        ('one_class', r"task 'solo': .* has 1 class folder"),
        ('empty', r"task 'hollow': .*(no images|none of the split folders)"),
        ('pool_key', r"unknown pool keys \['taks'\]"),
    ],
)
def test_bad_pools_fail_naming_the_task(tmp_path, case, message):
    write_task(tmp_path / 'alpha', {'train': {'a': 2, 'b': 2}, 'val': {'a': 1, 'b': 1}})
    alpha = {'root': str(tmp_path / 'alpha')}
    if case == 'unknown_key':
        spec = {'tasks': [{'rooot': 'x', 'name': 'alpha', 'root': alpha['root']}]}
    elif case == 'missing_root':
        spec = {'tasks': [alpha, {'root': str(tmp_path / 'ghost')}]}
    elif case == 'duplicate':
        spec = {'tasks': [alpha, dict(alpha)]}
    elif case == 'val_only_class':
        write_task(tmp_path / 'alpha', {'val': {'c': 1}})
        spec = {'tasks': [alpha]}
    elif case == 'one_class':
        write_task(tmp_path / 'solo', {'train': {'a': 2}})
        spec = {'tasks': [alpha, {'root': str(tmp_path / 'solo')}]}
    elif case == 'empty':
        (tmp_path / 'hollow' / 'train' / 'a').mkdir(parents=True)
        (tmp_path / 'hollow' / 'train' / 'b').mkdir(parents=True)
        spec = {'tasks': [alpha, {'root': str(tmp_path / 'hollow')}]}
    else:
        spec = {'taks': [], 'tasks': [alpha]}
    with pytest.raises(PoolError, match=message):
        load_pool(spec)


def test_class_missing_from_a_split_is_an_error(tmp_path):
    write_task(tmp_path / 'alpha', {'train': {'a': 2, 'b': 2}, 'val': {'a': 1}})
    with pytest.raises(PoolError, match=r"task 'alpha': split 'val' has no images of classes \['b'\]"):
        load_pool({'tasks': [{'root': str(tmp_path / 'alpha')}]})


def test_pool_file_errors_name_the_file(tmp_path):
    p = tmp_path / 'pool.yaml'
    p.write_text('tasks: []\n')
    with pytest.raises(PoolError, match='pool.yaml'):
        load_pool(p)


@pytest.mark.parametrize('name', ['dot.name', 'type', 'train', 'eval', 'to', 'cuda', 'a b', ''])
def test_task_names_that_cannot_name_a_head_are_refused_before_listing(tmp_path, name):
    write_task(tmp_path / 'alpha', {'train': {'a': 2, 'b': 2}})
    ghost = str(tmp_path / 'ghost')  # never listed: the name is refused first
    spec = {'tasks': [{'root': str(tmp_path / 'alpha')}, {'name': name, 'root': ghost}]}
    if name == '':  # an empty name falls back to the folder name: give the folder that name
        spec['tasks'][1] = {'root': str(tmp_path / 'x.y')}
        name = 'x.y'
    with pytest.raises(PoolError, match=rf'task {name!r}: .*(letters|attribute)'):
        load_pool(spec)


def test_task_names_with_letters_digits_underscore_dash_are_fine(tmp_path):
    write_task(tmp_path / 'alpha', {'train': {'a': 2, 'b': 2}})
    pool = load_pool({'tasks': [{'name': 'crc-5_class2', 'root': str(tmp_path / 'alpha')}]})
    assert pool.names == ['crc-5_class2']
