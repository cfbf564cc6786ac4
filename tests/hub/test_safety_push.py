"""Publishing sends exactly the files the dry run lists: no symlinks, no sub-folders, no pickles."""

import os
import pickle

import pytest
import timm
import torch

from mtdp_hub import push
from mtdp_hub.errors import ModelFolderError
from mtdp_hub.export import export_folder


@pytest.fixture
def folder(tmp_path):
    return export_folder(timm.create_model('resnet18', num_classes=0), tmp_path / 'm')


@pytest.mark.parametrize('name', ['README.md', 'extra.txt', 'notes.safetensors'])
def test_symlinks_are_refused_naming_the_file(folder, tmp_path, name):
    secret = tmp_path / 'secret'
    secret.write_text('root:x:0:0')
    (folder / name).unlink(missing_ok=True)
    os.symlink(secret, folder / name)
    with pytest.raises(ModelFolderError, match=f'{name}.*symbolic link'):
        push.push_folder(folder, 'org/name')


def test_sub_folders_are_refused(folder):
    (folder / 'sub').mkdir()
    (folder / 'sub' / 'evil.pth').write_bytes(b'x')
    with pytest.raises(ModelFolderError, match='sub'):
        push.push_folder(folder, 'org/name')


@pytest.mark.parametrize(
    'name', ['*', '[s]*', 'x.PTH', 'x.pth.tar', 'x.pickle', 'x.joblib', 'x.npy', 'x.pkl.gz']
)
def test_unlisted_files_are_refused_naming_them(folder, name):
    (folder / name).write_bytes(pickle.dumps({'a': 1}))
    with pytest.raises(
        ModelFolderError, match=name.replace('*', r'\*').replace('[', r'\[').replace('.', r'\.')
    ):
        push.push_folder(folder, 'org/name')


def test_pickle_renamed_safetensors_is_refused(folder):
    torch.save({'w': torch.zeros(2)}, folder / 'model.safetensors')
    with pytest.raises(ModelFolderError, match='model.safetensors'):
        push.push_folder(folder, 'org/name')


def test_config_must_be_json(folder):
    (folder / 'config.json').write_bytes(pickle.dumps({'architecture': 'x'}))
    with pytest.raises(ModelFolderError, match='config.json'):
        push.push_folder(folder, 'org/name')


def test_hidden_files_are_refused_not_silently_sent(folder):
    (folder / '.env').write_text('HF_TOKEN=secret')
    with pytest.raises(ModelFolderError, match=r'\.env'):
        push.push_folder(folder, 'org/name')


def test_upload_sends_exactly_the_listed_files(folder, monkeypatch):
    sent = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            pass

        def create_commit(self, repo_id, operations, **kwargs):
            sent.extend((op.path_in_repo, op.path_or_fileobj) for op in operations)

        def upload_folder(self, **kwargs):
            raise AssertionError('upload_folder takes patterns, not a file list')

    monkeypatch.setattr(push, 'HfApi', FakeApi)
    listed = push.push_folder(folder, 'org/name')
    push.push_folder(folder, 'org/name', dry_run=False)
    assert sent == [(p.name, str(p)) for p in listed]
