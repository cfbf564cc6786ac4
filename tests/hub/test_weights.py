"""The weight source chain: order, SHA-256 checks, collision-free cache names, one combined error."""

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._registry import _model_pretrained_cfgs

import mtdp_hub
import mtdp_hub.convert
from mtdp_hub import models
from mtdp_hub.export import export_folder
from mtdp_hub.weights import ENV_WEIGHTS_DIR, WeightSource, fetch_weights
from tests.conftest import populate_hf_cache


def _registry_cfg(name):
    """The registry's own row (timm hands out copies), for monkeypatching its sources."""
    return _model_pretrained_cfgs[name]


URL_PATHS = {
    'resnet50': '/index.php/s/kvABLtVuMxW8iJy/download',
    'densenet121': '/index.php/s/G72InP4xmJvOrVp/download',
}


def _serve(http_server, ckpt, monkeypatch, record_hash=True):
    """Serve the checkpoint at a URL ending in /download, as the original host did."""
    name = f'mtdp_{ckpt.arch}'
    data = ckpt.path.read_bytes()
    http_server.files[URL_PATHS[ckpt.arch]] = data
    cfg = _registry_cfg(f'{name}.mtdp22')
    monkeypatch.setattr(cfg, 'url', http_server.url + URL_PATHS[ckpt.arch])
    monkeypatch.setattr(cfg, 'hf_hub_id', None)
    if record_hash:
        key = f'{name}.mtdp22/{ckpt.path.name}'
        monkeypatch.setitem(models.WEIGHT_SHA256, key, hashlib.sha256(data).hexdigest())
    return name


@pytest.fixture(autouse=True)
def _no_weights_dir(monkeypatch):
    monkeypatch.delenv(ENV_WEIGHTS_DIR, raising=False)


def test_http_download_verified_and_cached(original_checkpoint, http_server, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    name = _serve(http_server, ckpt, monkeypatch)
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5
    cached = list(tmp_path.iterdir())
    assert [p.name for p in cached] == [
        f'{name}.mtdp22-{hashlib.sha256(ckpt.path.read_bytes()).hexdigest()[:12]}.pth'
    ]
    timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    assert len(http_server.requests) == 1, 'the second load must come from the cache'


def test_tampered_download_rejected_and_not_kept(original_checkpoint, http_server, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    name = _serve(http_server, ckpt, monkeypatch)
    data = bytearray(http_server.files[URL_PATHS['resnet50']])
    data[len(data) // 2] ^= 0xFF
    http_server.files[URL_PATHS['resnet50']] = bytes(data)
    with pytest.raises(mtdp_hub.WeightsNotFoundError, match='SHA-256 mismatch'):
        timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [], 'a bad download must not stay in the cache'


def test_both_download_urls_get_distinct_cache_files(original_checkpoint, http_server, monkeypatch, tmp_path):
    for arch in ('resnet50', 'densenet121'):
        name = _serve(http_server, original_checkpoint(arch), monkeypatch)
        timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert len(names) == 2 and names[0].startswith('mtdp_densenet121.mtdp22-')
    assert names[1].startswith('mtdp_resnet50.mtdp22-')


def test_unrecorded_hash_is_accepted_and_logged(
    original_checkpoint, http_server, monkeypatch, tmp_path, caplog
):
    ckpt = original_checkpoint('resnet50')
    name = _serve(http_server, ckpt, monkeypatch, record_hash=False)
    timm.create_model(name, pretrained=True, cache_dir=tmp_path)
    assert hashlib.sha256(ckpt.path.read_bytes()).hexdigest() in caplog.text


def test_weights_dir_comes_before_download(original_checkpoint, http_server, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    name = _serve(http_server, ckpt, monkeypatch)
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(ckpt.path.parent))
    model = timm.create_model(name, pretrained=True, cache_dir=tmp_path).eval()
    assert http_server.requests == [] and list(tmp_path.iterdir()) == []
    assert model.pretrained_cfg['file'] == str(ckpt.path)


def test_tampered_local_file_is_skipped_not_deleted(original_checkpoint, http_server, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    name = _serve(http_server, ckpt, monkeypatch)
    bad_dir = tmp_path / 'weights'
    bad_dir.mkdir()
    (bad_dir / ckpt.path.name).write_bytes(ckpt.path.read_bytes()[:-10] + b'0123456789')
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(bad_dir))
    timm.create_model(name, pretrained=True, cache_dir=tmp_path / 'cache')
    assert len(http_server.requests) == 1, 'the download is the next source after a bad local file'
    assert (bad_dir / ckpt.path.name).exists(), "the user's file is never deleted"


def test_hub_source_from_offline_cache(original_checkpoint, monkeypatch, tmp_path):
    ckpt = original_checkpoint('densenet121')
    folder = mtdp_hub.convert.convert_mtdp_checkpoint(ckpt.path, tmp_path / 'export')
    cfg = _registry_cfg('mtdp_densenet121.mtdp22')
    monkeypatch.setattr(cfg, 'url', 'http://127.0.0.1:9/unreachable/download')
    populate_hf_cache(tmp_path / 'hf', cfg.hf_hub_id, folder)
    model = timm.create_model('mtdp_densenet121', pretrained=True, cache_dir=tmp_path / 'hf').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_all_sources_failing_gives_one_error_listing_each(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(tmp_path / 'nowhere'))
    cfg = _registry_cfg('mtdp_resnet50.mtdp22')
    monkeypatch.setattr(cfg, 'url', 'http://127.0.0.1:9/s/x/download')
    with pytest.raises(mtdp_hub.WeightsNotFoundError) as info:
        timm.create_model('mtdp_resnet50', pretrained=True, cache_dir=tmp_path / 'cache')
    text = str(info.value)
    for expected in (
        'resnet50-mh-best-191205-141200.pth',
        'mtdp_resnet50.mtdp22.safetensors',
        'Hugging Face Hub mtdp-hub/mtdp_resnet50.mtdp22',
        'URL http://127.0.0.1:9/s/x/download',
        ENV_WEIGHTS_DIR,
        'mtdp convert',
    ):
        assert expected in text
    assert text.index('local file') < text.index('Hugging Face Hub') < text.index('URL')


def test_fetch_weights_first_working_source_wins(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir()
    b.mkdir()
    save_file({'w': torch.zeros(2)}, str(b / 'w.safetensors'))
    sources = [
        WeightSource('local-dir', str(a), 'w.safetensors'),
        WeightSource('local-dir', str(b), 'w.safetensors'),
        WeightSource('local-dir', str(a), 'never.safetensors'),
    ]
    assert fetch_weights('x.y', sources) == b / 'w.safetensors'


def test_exported_weights_dir_layout(original_checkpoint, monkeypatch, tmp_path):
    """$MTDP_WEIGHTS_DIR may also hold exported safetensors as <model>.<tag>/model.safetensors."""
    ckpt = original_checkpoint('resnet50')
    src = timm.create_model(
        'mtdp_resnet50', pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt.path))
    )
    export_folder(src, tmp_path / 'weights' / 'mtdp_resnet50.mtdp22')
    monkeypatch.setenv(ENV_WEIGHTS_DIR, str(tmp_path / 'weights'))
    model = timm.create_model('mtdp_resnet50', pretrained=True).eval()
    assert model.pretrained_cfg['file'].endswith('mtdp_resnet50.mtdp22/model.safetensors')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_hub_file_with_wrong_hash_is_removed_from_the_cache(original_checkpoint, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    folder = mtdp_hub.convert.convert_mtdp_checkpoint(ckpt.path, tmp_path / 'export')
    cfg = _registry_cfg('mtdp_resnet50.mtdp22')
    monkeypatch.setattr(cfg, 'url', 'http://127.0.0.1:9/unreachable/download')
    snapshot = populate_hf_cache(tmp_path / 'hf', cfg.hf_hub_id, folder)
    monkeypatch.setitem(models.WEIGHT_SHA256, 'mtdp_resnet50.mtdp22/model.safetensors', '0' * 64)
    with pytest.raises(mtdp_hub.WeightsNotFoundError, match='SHA-256 mismatch for Hugging Face Hub'):
        timm.create_model('mtdp_resnet50', pretrained=True, cache_dir=tmp_path / 'hf')
    assert not (snapshot / 'model.safetensors').exists()
    assert (snapshot / 'config.json').exists()


def test_unhashed_download_that_is_not_a_checkpoint_is_not_cached(http_server, monkeypatch, tmp_path):
    http_server.files[URL_PATHS['resnet50']] = b'<html>Service Unavailable</html>'
    cfg = _registry_cfg('mtdp_resnet50.mtdp22')
    monkeypatch.setattr(cfg, 'url', http_server.url + URL_PATHS['resnet50'])
    monkeypatch.setattr(cfg, 'hf_hub_id', None)
    with pytest.raises(mtdp_hub.WeightsNotFoundError, match='CheckpointError'):
        timm.create_model('mtdp_resnet50', pretrained=True, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('bad', ['truncated', 'html'])
def test_unreadable_hub_file_is_evicted_and_the_next_source_used(
    original_checkpoint, http_server, monkeypatch, tmp_path, bad
):
    ckpt = original_checkpoint('resnet50')
    folder = mtdp_hub.convert.convert_mtdp_checkpoint(ckpt.path, tmp_path / 'export')
    cfg = _registry_cfg('mtdp_resnet50.mtdp22')
    snapshot = populate_hf_cache(tmp_path / 'hf', cfg.hf_hub_id, folder)
    data = (snapshot / 'model.safetensors').read_bytes()
    (snapshot / 'model.safetensors').write_bytes(data[: len(data) // 2] if bad == 'truncated' else b'<html>')
    http_server.files[URL_PATHS['resnet50']] = ckpt.path.read_bytes()
    monkeypatch.setattr(cfg, 'url', http_server.url + URL_PATHS['resnet50'])
    model = timm.create_model('mtdp_resnet50', pretrained=True, cache_dir=tmp_path / 'hf').eval()
    assert len(http_server.requests) == 1, 'the URL is the next source after a bad Hub file'
    assert not (snapshot / 'model.safetensors').exists(), 'the bad blob is evicted'
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (model(x) - ckpt.reference(x)).abs().max() <= 1e-5


def test_unreadable_local_file_is_skipped_not_deleted(tmp_path):
    a, b = tmp_path / 'a', tmp_path / 'b'
    a.mkdir()
    b.mkdir()
    (a / 'w.safetensors').write_bytes(b'<html>not weights</html>')
    save_file({'w': torch.zeros(2)}, str(b / 'w.safetensors'))
    sources = [
        WeightSource('local-dir', str(a), 'w.safetensors'),
        WeightSource('local-dir', str(b), 'w.safetensors'),
    ]
    assert fetch_weights('x.y', sources) == b / 'w.safetensors'
    assert (a / 'w.safetensors').exists()


def test_all_sources_failing_names_the_command_line_option(monkeypatch, tmp_path):
    with pytest.raises(mtdp_hub.WeightsNotFoundError, match='--weights FILE'):
        fetch_weights('mtdp_resnet50.mtdp22', [WeightSource('local-dir', str(tmp_path), 'none.pth')])


def _no_online_download(monkeypatch):
    """Record hf_hub_download calls; any that would go to the network fails the test."""
    import mtdp_hub.weights

    calls = []
    real = mtdp_hub.weights.hf_hub_download

    def download(*args, local_files_only=False, **kwargs):
        calls.append(local_files_only)
        assert local_files_only, 'the Hub was asked although it cannot be reached'
        return real(*args, local_files_only=True, **kwargs)

    monkeypatch.setattr(mtdp_hub.weights, 'hf_hub_download', download)
    return calls


def test_unreachable_hub_fails_at_once_with_the_offline_hint(closed_hub, monkeypatch, tmp_path):
    calls = _no_online_download(monkeypatch)
    source = WeightSource('hf-hub', 'org/model', 'model.safetensors')
    with pytest.raises(mtdp_hub.WeightsNotFoundError) as info:
        fetch_weights('x.y', [source], cache_dir=tmp_path / 'hf')
    text = str(info.value)
    assert 'HubUnreachableError' in text and closed_hub in text and 'HF_HUB_OFFLINE=1' in text
    assert calls == [True]  # only the local cache was looked at


def test_unreachable_hub_still_serves_its_cache(closed_hub, original_checkpoint, monkeypatch, tmp_path):
    ckpt = original_checkpoint('resnet50')
    folder = mtdp_hub.convert.convert_mtdp_checkpoint(ckpt.path, tmp_path / 'export')
    populate_hf_cache(tmp_path / 'hf', 'org/model', folder)
    calls = _no_online_download(monkeypatch)
    source = WeightSource('hf-hub', 'org/model', 'model.safetensors')
    path = fetch_weights('x.y', [source], cache_dir=tmp_path / 'hf')
    assert path.read_bytes() == (folder / 'model.safetensors').read_bytes() and calls == [True]
