"""Publishing: dry run by default, refuses incomplete or pickled folders; never touches the network."""

import pytest
import timm

from mtdp_hub import push
from mtdp_hub.export import export_folder
from mtdp_hub.hubcheck import HubUnreachableError


@pytest.fixture
def folder(tmp_path):
    return export_folder(timm.create_model('resnet18', num_classes=0), tmp_path / 'm')


def test_dry_run_lists_files(folder):
    files = push.push_folder(folder, 'org/name')
    assert [p.name for p in files] == ['README.md', 'config.json', 'model.safetensors']


def test_refuses_pickles_and_incomplete_folders(folder):
    (folder / 'pytorch_model.bin').write_bytes(b'x')
    with pytest.raises(ValueError, match='pickled weight files: pytorch_model.bin'):
        push.push_folder(folder, 'org/name')
    (folder / 'pytorch_model.bin').unlink()
    (folder / 'config.json').unlink()
    with pytest.raises(ValueError, match='missing config.json'):
        push.push_folder(folder, 'org/name')


def test_upload_goes_through_hfapi(folder, monkeypatch):
    calls = []

    class FakeApi:
        endpoint = 'https://hub.example'

        def __init__(self, token=None):
            calls.append(('init', token))

        def create_repo(self, repo_id, **kwargs):
            calls.append(('create_repo', repo_id, kwargs['exist_ok'], kwargs['private']))

        def create_commit(self, repo_id, operations, **kwargs):
            calls.append(
                ('create_commit', repo_id, [(op.path_in_repo, op.path_or_fileobj) for op in operations])
            )

    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', False)
    monkeypatch.setattr(push, 'check_hub_reachable', lambda what, endpoint: None)  # as if it answered
    monkeypatch.setattr(push, 'HfApi', FakeApi)
    push.push_folder(folder, 'org/name', dry_run=False, private=True, token='t')
    assert calls == [
        ('init', 't'),
        ('create_repo', 'org/name', True, True),
        (
            'create_commit',
            'org/name',
            [(name, str(folder / name)) for name in ('README.md', 'config.json', 'model.safetensors')],
        ),
    ]


class _NoApi:
    endpoint = None  # huggingface_hub's own default

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        raise AssertionError('nothing may be sent')


def test_upload_to_an_unreachable_hub_fails_at_once_with_the_offline_hint(folder, closed_hub, monkeypatch):
    monkeypatch.setattr(push, 'HfApi', _NoApi)
    with pytest.raises(HubUnreachableError) as info:
        push.push_folder(folder, 'org/name', dry_run=False)
    assert closed_hub in str(info.value) and 'HF_HUB_OFFLINE=1' in str(info.value)


def test_upload_while_offline_says_so(folder, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)  # the real HfApi refuses every request
    with pytest.raises(HubUnreachableError, match='HF_HUB_OFFLINE is set'):
        push.push_folder(folder, 'org/name', dry_run=False, token='not-used')
    assert push.push_folder(folder, 'org/name')  # a dry run needs no network
