"""mtdp_hub.catalog (what `mtdp list` reads, without torch) agrees with the timm registry rows, and the
Hub reachability check fails at once on a refused connection."""

import socket

import pytest
import timm

from mtdp_hub import catalog, models
from mtdp_hub.hubcheck import HubUnreachableError, check_hub_reachable, check_model_reachable


@pytest.mark.parametrize('name', sorted(catalog.RELEASES))
def test_releases_agree_with_the_registry(name, monkeypatch, tmp_path):
    release, cfg = catalog.RELEASES[name], timm.models.get_pretrained_cfg(name)
    assert (release.hf_hub_id, release.url) == (cfg.hf_hub_id, cfg.url)
    assert release.original_file == models.ORIGINAL_FILES[name] and catalog.HF_ORG == models.HF_ORG
    monkeypatch.setenv(catalog.ENV_WEIGHTS_DIR, str(tmp_path))
    local = [s for s in models.weight_sources(cfg) if s.kind == 'local-dir']
    expected = catalog.weights_dir_files(name, tmp_path, release.original_file)
    assert [tmp_path / s.location / s.file_name for s in local] == expected


def test_registry_rows_are_all_in_the_catalog():
    assert set(timm.list_pretrained('mtdp_*')) == set(catalog.RELEASES)


def test_local_weights_finds_each_place(monkeypatch, tmp_path):
    from huggingface_hub import constants

    name = 'mtdp_densenet121.mtdp22'
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setenv(catalog.ENV_CACHE_DIR, str(tmp_path / 'downloads'))
    monkeypatch.setenv(catalog.ENV_WEIGHTS_DIR, str(tmp_path / 'weights'))
    assert catalog.local_weights(name) == []
    converted = tmp_path / 'weights' / name / 'model.safetensors'
    converted.parent.mkdir(parents=True)
    converted.write_bytes(b'x')
    downloaded = tmp_path / 'downloads' / f'{name}-0123456789ab.pth'
    downloaded.parent.mkdir()
    downloaded.write_bytes(b'x')
    assert catalog.local_weights(name) == [converted, downloaded]


def test_refused_connection_is_reported_with_the_offline_hint(closed_hub):
    with pytest.raises(HubUnreachableError) as info:
        check_hub_reachable('fetching x')
    assert str(info.value).startswith('fetching x: cannot reach') and closed_hub in str(info.value)
    assert 'HF_HUB_OFFLINE=1' in str(info.value)
    with pytest.raises(HubUnreachableError, match='timm/resnet18'):
        check_model_reachable('resnet18')  # timm's weights for resnet18 are on the Hub
    check_model_reachable('random:resnet18')  # no weights to fetch
    check_model_reachable('local-dir:/anywhere')


def test_listening_endpoint_passes(closed_hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as server:
        server.bind(('127.0.0.1', 0))
        server.listen()
        monkeypatch.setattr(constants, 'ENDPOINT', f'http://127.0.0.1:{server.getsockname()[1]}')
        check_hub_reachable('fetching x')
