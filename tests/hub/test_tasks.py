"""The one task-folder reader: classes, hidden folders, symlinks, group ids; shared by evaluate and training."""

from __future__ import annotations

import shutil

import pytest

from mtdp_hub.errors import TaskFolderError
from mtdp_hub.evaluation import load_task
from mtdp_hub.tasks import group_id, read_task_folder
from tests.conftest import KATHER_ASSETS
from training.pool import load_pool


def _copy(src_class: str, dst):
    dst.mkdir(parents=True, exist_ok=True)
    for img in sorted((KATHER_ASSETS / src_class).iterdir()):
        shutil.copy(img, dst / img.name)


@pytest.fixture
def binary_task(tmp_path):
    """Tumour vs stroma, real H&E tiles, with the clutter tools leave behind."""
    root = tmp_path / 'tumour_vs_stroma'
    for split in ('train', 'test'):
        _copy('01_TUMOR', root / split / 'tumour')
        _copy('02_STROMA', root / split / 'stroma')
    _copy('03_COMPLEX', root / 'train' / '.ipynb_checkpoints')  # a notebook's stray folder
    _copy('04_LYMPHO', root / 'test' / '__MACOSX')  # an unzipped archive's
    _copy('05_DEBRIS', root / 'train' / 'tumour' / '.cache')  # hidden folder inside a class
    return root


def test_hidden_folders_are_neither_classes_nor_searched(binary_task):
    task = read_task_folder(binary_task)
    assert task.class_names == ['stroma', 'tumour']
    assert {s: len(v) for s, v in task.splits.items()} == {'train': 6, 'test': 6}
    assert not any(
        part.startswith('.') or part == '__MACOSX' for p in task.splits['train'].paths for part in p.parts
    )


def test_evaluate_and_training_read_the_same_binary_task(binary_task):
    task = load_task(binary_task)
    assert task.metric == 'roc_auc' and task.n_classes == 2  # not 3-class accuracy
    pool = load_pool({'tasks': [{'root': str(binary_task)}]}, ['train'], None)
    assert pool.tasks[0].classes == task.class_names
    assert pool.tasks[0].splits['train'].items == [str(p) for p in task.splits['train'].paths]
    assert pool.tasks[0].splits['train'].labels == task.splits['train'].labels


def test_symlinked_class_folder_is_followed(tmp_path):
    root = tmp_path / 'task'
    _copy('01_TUMOR', root / 'train' / 'tumour')
    _copy('02_STROMA', tmp_path / 'elsewhere' / 'stroma')
    (root / 'train' / 'stroma').symlink_to(tmp_path / 'elsewhere' / 'stroma', target_is_directory=True)
    task = read_task_folder(root)
    assert [len([y for y in task.splits['train'].labels if y == c]) for c in (0, 1)] == [3, 3]


def test_group_id_is_the_prefix_before_the_first_underscore():
    assert group_id('1A11_CRC-Prim-HE-07_022.tif_Row_601_Col_151.tif') == '1A11'
    assert group_id('/x/p17_0003.png') == 'p17' and group_id('lonely.png') == 'lonely'


@pytest.mark.parametrize(
    'layout, message',
    [
        ({}, 'does not exist'),
        ({'other/a': 1}, 'none of the split folders'),
        ({'train/a': 1, 'train/.ipynb_checkpoints': 1}, '1 class folder'),
    ],
)
def test_bad_folders_name_the_folder(tmp_path, layout, message):
    root = tmp_path / 'task'
    for sub in layout:
        _copy('01_TUMOR', root / sub)
    with pytest.raises(TaskFolderError, match=message) as info:
        read_task_folder(root)
    assert str(root) in str(info.value)


def test_evaluation_needs_train_and_test(tmp_path):
    _copy('01_TUMOR', tmp_path / 't' / 'train' / 'a')
    _copy('02_STROMA', tmp_path / 't' / 'train' / 'b')
    with pytest.raises(TaskFolderError, match='test'):
        load_task(tmp_path / 't')
