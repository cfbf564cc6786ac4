"""The uint8 data path (workers -> uint8, normalised on the device), --weights, failures that name the
image and write nothing, progress output, help text, worker counts."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdp_hub.errors import FeatureFileError, InputNotFoundError, UnreadableImageError
from mtdp_hub.features import FeatureExtractor, extract_features, read_features, runtime
from mtdp_hub.features import run as run_mod
from mtdp_hub.features.pipeline import loader_settings, stream_features
from mtdp_hub.images import open_rgb
from tests.conftest import KATHER_ASSETS

MODEL = 'random:resnet18'
FAST = dict(img_size=32, num_workers=0, progress=False, batch_size=8)


def _write_rgb(path: Path, size=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


def _kather(n_per_class: int) -> list[Path]:
    return [p for c in sorted(KATHER_ASSETS.iterdir()) for p in sorted(c.iterdir())[:n_per_class]]


# ---------------------------------------------------------------------------- uint8 == float path
def test_uint8_pixels_normalised_equal_timm_transform_on_real_tiles():
    ext = FeatureExtractor(MODEL, device='cpu')  # 224 px: resize 150 -> 256, centre crop 224
    for path in _kather(1):
        im = open_rgb(path)
        u8 = ext.pixel_transform(im)
        assert u8.dtype == torch.uint8 and u8.shape == (3, 224, 224)
        ref = ext.transform(im)
        torch.testing.assert_close(ext.normalise(u8[None])[0], ref, rtol=0, atol=2e-6)


def test_extract_uint8_path_gives_the_float_path_features_on_real_tiles(tmp_path):
    """``mtdp extract`` (uint8 workers, normalised in the extractor) vs timm's float transform + the
    model, as extraction worked before: the same features to float rounding."""
    out = tmp_path / 'f.safetensors'
    extract_features(MODEL, KATHER_ASSETS, out, device='cpu', num_workers=0, progress=False, batch_size=12)
    ff = read_features(out)
    ext = FeatureExtractor(MODEL, device='cpu')
    x = torch.stack([ext.transform(open_rgb(KATHER_ASSETS / p)) for p in ff.paths])
    with torch.inference_mode():
        ref = ext.model(x).numpy()
    assert ff.features.shape == (24, 512)
    np.testing.assert_allclose(ff.features, ref, rtol=1e-4, atol=1e-5)


def test_extractor_takes_uint8_or_normalised_float_batches():
    ext = FeatureExtractor(MODEL, img_size=32, device='cpu', tta='flip3')
    ims = [open_rgb(p) for p in _kather(1)[:4]]
    u8 = torch.stack([ext.pixel_transform(im) for im in ims])
    fl = torch.stack([ext.transform(im) for im in ims])
    a, b = ext(u8), ext(fl)
    assert a.dtype == torch.float32 and a.device.type == 'cpu' and a.shape == (4, 512)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ext.device_features(u8), a)


def test_stream_features_keeps_order_and_batches_without_images():
    ext = FeatureExtractor(MODEL, img_size=32, device='cpu')
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen) for n in (3, 1, 2)]
    tagged = [('a', batches[0]), ('none', None), ('b', batches[1]), ('c', batches[2])]
    out = list(stream_features(ext, iter(tagged), depth=2))
    assert [t for t, _ in out] == ['a', 'none', 'b', 'c'] and out[1][1] is None
    for (_, f), x in zip([out[0], out[2], out[3]], batches):
        assert isinstance(f, np.ndarray) and f.shape == (len(x), 512)
        np.testing.assert_array_equal(f, ext(x).numpy())


def test_source_mpp_applies_to_the_uint8_path():
    ext = FeatureExtractor(MODEL, img_size=48, device='cpu', source_mpp=0.25, mpp=0.5)
    im = open_rgb(_kather(1)[0])
    torch.testing.assert_close(
        ext.normalise(ext.pixel_transform(im)[None])[0], ext.transform(im), atol=2e-6, rtol=0
    )


# ---------------------------------------------------------------------------- workers
def test_workers_default_for_the_device_and_capped_at_the_cpus(monkeypatch):
    monkeypatch.delenv('LOCAL_WORLD_SIZE', raising=False)
    monkeypatch.setattr(runtime, 'available_cpus', lambda: 16)
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    assert runtime.loader_workers(cuda) == 15 and runtime.loader_workers(cpu) == 8
    assert runtime.loader_workers(cuda, 64) == 16 and runtime.loader_workers(cpu, 0) == 0
    monkeypatch.setattr(runtime, 'available_cpus', lambda: 1)
    assert runtime.loader_workers(cuda) == 1 and runtime.loader_workers(cpu) == 1
    s = loader_settings(cpu, 0)
    assert s['num_workers'] == 0 and s['prefetch_factor'] is None and not s['pin_memory']
    assert s['batch_size'] == 64 and loader_settings(cuda, None)['batch_size'] == 256
    assert loader_settings(cuda, 2, 32) == dict(
        batch_size=32, num_workers=1, pin_memory=True, persistent_workers=False, prefetch_factor=4
    )
    assert runtime.available_cpus() >= 1
    with pytest.raises(ValueError, match='workers'):
        runtime.loader_workers(cpu, -1)


def test_torchrun_ranks_on_one_machine_share_its_cpus(monkeypatch):
    """4 local ranks on 16 CPUs: 4 each, so a rank's default is 3 workers on CUDA, 2 on the CPU."""
    monkeypatch.setattr(runtime, 'available_cpus', lambda: 16)
    monkeypatch.setenv('LOCAL_WORLD_SIZE', '4')
    cuda, cpu = torch.device('cuda'), torch.device('cpu')
    assert runtime.cpu_share() == 4
    assert runtime.loader_workers(cuda) == 3 and runtime.loader_workers(cpu) == 2
    assert runtime.loader_workers(cuda, 16) == 4


# ---------------------------------------------------------------------------- --weights FILE
@pytest.fixture
def weight_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model('test_resnet', pretrained=False, num_classes=0)
    path = tmp_path / 'w' / 'mine.safetensors'
    path.parent.mkdir()
    save_file(model.state_dict(), str(path))
    return path, model


def test_weights_file_is_loaded_and_recorded_with_its_sha256(tmp_path, weight_file):
    path, model = weight_file
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    out = tmp_path / 'f.safetensors'
    extract_features('test_resnet', tmp_path / 'in', out, weights=path, **FAST)
    ff = read_features(out)
    w = ff.provenance['weights']
    assert w['source'] == 'file' and w['file'] == str(path.resolve())
    assert w['sha256'] == hashlib.sha256(path.read_bytes()).hexdigest()
    ext = FeatureExtractor('test_resnet', img_size=32, device='cpu', model=model)
    x = ext.pixel_transform(open_rgb(tmp_path / 'in' / 'a' / 'x.png'))[None]
    np.testing.assert_allclose(ff.features, ext(x).numpy(), rtol=1e-5, atol=1e-6)


def test_cli_weights_option_and_missing_file_named_before_work(tmp_path, weight_file, monkeypatch, capsys):
    from mtdp_hub.cli.extract import add_cli

    path, _ = weight_file
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    parser = argparse.ArgumentParser(prog='mtdp')
    add_cli(parser.add_subparsers(dest='command', required=True))
    argv = ['extract', '--model', 'test_resnet', '--input', str(tmp_path / 'in'), '--img-size', '32']
    argv += ['--workers', '0', '--no-progress', '--weights']
    args = parser.parse_args(argv + [str(path), '--output', str(tmp_path / 'f.parquet')])
    assert args.func(args) == 0
    assert json.loads(capsys.readouterr().out)['n_new'] == 1
    assert read_features(tmp_path / 'f.parquet').provenance['weights']['file'] == str(path.resolve())
    monkeypatch.setattr(run_mod, 'make_source', lambda *a, **k: pytest.fail('the input must not be read'))
    args = parser.parse_args(argv + [str(tmp_path / 'nope.pth'), '--output', str(tmp_path / 'g.parquet')])
    with pytest.raises(InputNotFoundError, match=r'nope\.pth'):
        args.func(args)


# ---------------------------------------------------------------------------- failures
@pytest.mark.parametrize('suffix', ['.parquet', '.safetensors'])
def test_on_error_error_names_the_image_and_writes_no_empty_file(tmp_path, suffix):
    (tmp_path / 'in' / 'a').mkdir(parents=True)
    (tmp_path / 'in' / 'a' / '0.jpg').write_bytes(b'')  # the first image is the bad one
    _write_rgb(tmp_path / 'in' / 'a' / '1.png')
    out = tmp_path / f'f{suffix}'
    with pytest.raises(UnreadableImageError, match=r'a/0\.jpg.*empty'):
        extract_features(MODEL, tmp_path / 'in', out, on_error='error', **dict(FAST, batch_size=1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['in']  # no file, no lock, no partial file


@pytest.mark.parametrize('suffix', ['.parquet', '.safetensors'])
def test_no_readable_image_is_an_error_naming_them_and_writes_nothing(tmp_path, suffix):
    (tmp_path / 'in' / 'a').mkdir(parents=True)
    (tmp_path / 'in' / 'a' / '0.jpg').write_bytes(b'')
    (tmp_path / 'in' / 'a' / '1.png').write_text('not an image')
    out = tmp_path / f'f{suffix}'
    with pytest.raises(FeatureFileError, match=r'none of the 2 image.*a/0\.jpg.*nothing was written'):
        extract_features(MODEL, tmp_path / 'in', out, **FAST)
    assert not out.exists()


def test_periodic_saves_run_in_the_background_one_at_a_time_and_the_last_has_every_row(tmp_path, monkeypatch):
    import threading
    import time

    for i in range(6):
        _write_rgb(tmp_path / 'in' / 'a' / f'{i}.png', seed=i)
    real, calls, active = run_mod.write_features, [], []

    def slow_write(path, ff):
        active.append(1)
        assert len(active) == 1, 'two writes at once'
        calls.append((threading.current_thread().name, len(ff.paths)))
        time.sleep(0.05)
        real(path, ff)
        active.pop()

    monkeypatch.setattr(run_mod, 'write_features', slow_write)
    out = tmp_path / 'f.safetensors'
    extract_features(MODEL, tmp_path / 'in', out, save_every=1, **dict(FAST, batch_size=1))
    assert calls[0][0] == 'mtdp-extract-save' and calls[-1] == (threading.current_thread().name, 6)
    assert [n for _, n in calls] == sorted(n for _, n in calls)
    assert len(read_features(out).paths) == 6


def test_progress_bar_stays_out_of_captured_output_and_a_summary_line_ends(tmp_path, capfd):
    for i in range(3):
        _write_rgb(tmp_path / 'in' / 'a' / f'{i}.png', seed=i)
    extract_features(MODEL, tmp_path / 'in', tmp_path / 'f.safetensors', **dict(FAST, progress=True))
    out, err = capfd.readouterr()
    assert '\r' not in out + err
    lines = [x for x in err.splitlines() if x.startswith('extract ')]
    assert len(lines) == 1 and '3 new' in lines[0] and 'f.safetensors' in lines[0]


# ---------------------------------------------------------------------------- help text
@pytest.mark.parametrize('command', ['extract', 'slides'])
def test_every_option_has_help_showing_its_default_without_rest_markup(command):
    from mtdp_hub.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    assert '``' not in text and ':class:' not in text
    formatter = sub._get_formatter()
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f'{command} {action.option_strings} has no help text'
        assert '`' not in action.help
        if action.default not in (None, False) and action.option_strings:
            shown = formatter._get_help_string(action)
            assert '%(default)s' in shown or 'default' in shown, f'{command} {action.option_strings[0]}'


def test_slides_out_that_is_a_file_refused_before_the_model_loads(tmp_path, monkeypatch):
    pytest.importorskip('openslide')
    from mtdp_hub.features.slides import run as slides_run

    monkeypatch.setattr(slides_run, 'FeatureExtractor', lambda *a, **k: pytest.fail('no model'))
    (tmp_path / 'out').write_text('x')
    with pytest.raises(FeatureFileError, match=r'out is a file'):
        slides_run.run_slides(MODEL, tmp_path, tmp_path / 'out')
