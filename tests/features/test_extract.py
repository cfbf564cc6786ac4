"""mtdp extract: shapes, order, labels, resume, unreadable files listed, layers, TTA, provenance."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdp_hub.cli.extract import add_cli
from mtdp_hub.errors import UnreadableImageError
from mtdp_hub.features import (
    FeatureExtractor,
    extract_features,
    extract_source,
    make_source,
    read_features,
)
from tests.conftest import KATHER_ASSETS

SHARED = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
CRC = SHARED / 'crc-he-5class'
KATHER = KATHER_ASSETS  # in the repository: these tests run on a plain clone
FAST = dict(img_size=32, num_workers=0, progress=False, batch_size=8)
MODEL = 'random:resnet18'


def _needs(path: Path):
    return pytest.mark.skipif(not path.is_dir(), reason=f'shared data {path} absent')


def _write_rgb(path: Path, size=40, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(a).save(path)


def _link_subset(src_root: Path, dst_root: Path, per_class: int) -> list[str]:
    """Symlink the first ``per_class`` images of each class folder (never copies the data)."""
    rels = []
    for cls in sorted(p for p in src_root.iterdir() if p.is_dir()):
        for img in sorted(cls.iterdir())[:per_class]:
            dst = dst_root / cls.name / img.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(img)
            rels.append(f'{cls.name}/{img.name}')
    return rels


@_needs(CRC)
def test_crc_jpeg_shapes_order_labels(tmp_path):
    rels = _link_subset(CRC / 'val', tmp_path / 'in', per_class=2)
    stats = extract_features(MODEL, tmp_path / 'in', tmp_path / 'f.safetensors', **FAST)
    ff = read_features(tmp_path / 'f.safetensors')
    assert stats['n_new'] == 10 and stats['n_failed'] == 0
    assert ff.features.shape == (10, 512) and ff.features.dtype == np.float32
    assert ff.paths == sorted(rels)
    assert ff.class_names == ['AC', 'H', 'S', 'T', 'V']
    assert ff.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert np.isfinite(ff.features).all() and len({f.tobytes() for f in ff.features}) == 10


def test_kather_tiff_shapes_order_labels_parquet(tmp_path):
    extract_features(MODEL, KATHER, tmp_path / 'f.parquet', **FAST)
    ff = read_features(tmp_path / 'f.parquet')
    assert ff.features.shape == (24, 512)
    assert ff.paths == sorted(ff.paths) and ff.paths[0].startswith('01_TUMOR/')
    assert ff.class_names[0] == '01_TUMOR' and len(ff.class_names) == 8
    assert ff.labels.tolist() == [c for c in range(8) for _ in range(3)]
    # same numbers through safetensors
    extract_features(MODEL, KATHER, tmp_path / 'f.safetensors', **FAST)
    np.testing.assert_array_equal(read_features(tmp_path / 'f.safetensors').features, ff.features)


def test_resume_skips_done_and_matches_single_run(tmp_path):
    rels = _link_subset(KATHER, tmp_path / 'in', per_class=3)
    first = rels[:9]
    (tmp_path / 'first.txt').write_text(''.join(f'in/{r}\n' for r in first))
    (tmp_path / 'all.txt').write_text(''.join(f'in/{r}\n' for r in rels))
    out = tmp_path / 'f.safetensors'
    s1 = extract_features(MODEL, tmp_path / 'first.txt', out, **FAST)
    before = read_features(out)
    s2 = extract_features(MODEL, tmp_path / 'all.txt', out, **FAST)
    after = read_features(out)
    assert (s1['n_new'], s2['n_skipped_done'], s2['n_new']) == (9, 9, 15)
    assert after.paths == [f'in/{r}' for r in rels]
    np.testing.assert_array_equal(after.features[:9], before.features)  # done rows untouched
    s3 = extract_features(MODEL, tmp_path / 'all.txt', out, **FAST)
    assert s3['n_new'] == 0 and s3['n_skipped_done'] == 24
    assert len(after.meta['runs']) == 2
    single = tmp_path / 'single.safetensors'
    extract_features(MODEL, tmp_path / 'all.txt', single, **FAST)
    np.testing.assert_allclose(read_features(single).features, after.features, atol=1e-5)


def test_resume_refuses_other_provenance(tmp_path):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    out = tmp_path / 'f.safetensors'
    extract_features(MODEL, tmp_path / 'in', out, **FAST)
    with pytest.raises(ValueError, match='layer'):
        extract_features(MODEL, tmp_path / 'in', out, layer='trunc', **FAST)
    stats = extract_features(MODEL, tmp_path / 'in', out, layer='trunc', overwrite=True, **FAST)
    assert stats['n_new'] == 1 and read_features(out).features.shape == (1, 256)


def _bad_and_awkward_folder(root: Path) -> tuple[set[str], set[str]]:
    """Readable-but-awkward images and undecodable ones, built here (PIL, numpy)."""
    good = root / 'good'
    _write_rgb(good / 'rgb.jpg')
    Image.new('CMYK', (40, 40), (10, 200, 30, 0)).save(good / 'cmyk.jpg')
    Image.fromarray(np.full((40, 40, 4), 128, np.uint8), 'RGBA').save(good / 'rgba.png')
    Image.new('P', (40, 40), 3).save(good / 'palette.png')
    Image.fromarray(np.full((40, 40), 40000, np.uint16)).save(good / 'grey16.tif')
    Image.fromarray(np.full((40, 40), 90, np.uint8), 'L').save(good / 'grey8.tif')
    _write_rgb(good / 'tiny.png', size=5)  # smaller than the crop: upscaled, not an error
    bad = root / 'bad'
    bad.mkdir()
    (bad / 'zero.jpg').write_bytes(b'')
    buf = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(buf, format='JPEG')
    (bad / 'truncated.jpg').write_bytes(buf.getvalue()[:200])
    (bad / 'text.png').write_text('not an image')
    oks = {f'good/{p.name}' for p in good.iterdir()}
    bads = {'bad/zero.jpg', 'bad/truncated.jpg', 'bad/text.png'}
    return oks, bads


def test_bad_images_skipped_counted_and_listed(tmp_path):
    oks, bads = _bad_and_awkward_folder(tmp_path / 'in')
    out = tmp_path / 'f.safetensors'
    stats = extract_features(MODEL, tmp_path / 'in', out, **FAST)
    ff = read_features(out)
    assert set(ff.paths) == oks and stats['n_failed'] == 3
    assert set(ff.failed) == bads and ff.meta['n_failed'] == 3
    assert 'empty' in ff.failed['bad/zero.jpg'] and 'truncated' in ff.failed['bad/truncated.jpg'].lower()
    assert np.isfinite(ff.features).all()
    # a rerun retries the failed ones (still failing) and keeps them listed
    again = extract_features(MODEL, tmp_path / 'in', out, **FAST)
    assert again['n_new'] == 0 and again['n_failed'] == 3 and set(read_features(out).failed) == bads


def test_on_error_raise_names_file_and_keeps_progress(tmp_path):
    _write_rgb(tmp_path / 'in' / 'a' / '0.png')
    (tmp_path / 'in' / 'a' / '1.jpg').write_bytes(b'')
    out = tmp_path / 'f.safetensors'
    with pytest.raises(UnreadableImageError, match='1.jpg'):
        extract_features(MODEL, tmp_path / 'in', out, on_error='error', **dict(FAST, batch_size=1))
    assert read_features(out).paths == ['a/0.png']


def test_trunc_layer_is_resnet50_layer3_pooled_1024():
    x = torch.randn(2, 3, 64, 64)
    ext = FeatureExtractor('random:resnet50', layer='trunc', img_size=64, device='cpu')
    f = ext(x)
    assert f.shape == (2, 1024)
    with torch.no_grad():
        m = ext.model
        ref = m.layer3(m.layer2(m.layer1(m.maxpool(m.act1(m.bn1(m.conv1(x))))))).mean((2, 3))
    torch.testing.assert_close(f, ref, atol=1e-5, rtol=1e-5)


def test_tta_flip4_is_mean_of_flipped_views():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    plain = FeatureExtractor(MODEL, img_size=32, device='cpu')
    tta = FeatureExtractor(MODEL, img_size=32, device='cpu', tta='flip4', model=plain.model)
    views = [x, x.flip(3), x.flip(2), x.flip((2, 3))]
    ref = torch.stack([plain(v) for v in views]).mean(0)
    torch.testing.assert_close(tta(x), ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(plain(x), ref, atol=1e-4)


def test_provenance_records_local_dir_sha256_and_preprocessing(tmp_path):
    import timm
    from timm.models import save_for_hf

    model = timm.create_model('test_resnet', pretrained=False, num_classes=0)
    save_for_hf(model, tmp_path / 'm', safe_serialization=True)
    _write_rgb(tmp_path / 'in' / 'c' / 'x.png')
    spec = f'local-dir:{tmp_path / "m"}'
    extract_features(spec, tmp_path / 'in', tmp_path / 'f.safetensors', **FAST)
    prov = read_features(tmp_path / 'f.safetensors').provenance
    expected = hashlib.sha256((tmp_path / 'm' / 'model.safetensors').read_bytes()).hexdigest()
    assert prov['weights']['sha256'] == expected
    assert prov['model'] == spec and prov['architecture'] == 'test_resnet'
    assert prov['preprocessing']['input_size'] == [3, 32, 32]
    assert prov['layer'] == 'pooled' and prov['precision'] == 'float32'
    assert {'torch', 'timm', 'mtdp_hub'} <= set(prov['versions'])


def test_datasets_source(tmp_path):
    datasets = pytest.importorskip('datasets')
    imgs = [Image.fromarray(np.full((20, 20, 3), v, np.uint8)) for v in (0, 100, 200)]
    ds = datasets.Dataset.from_dict(
        {'image': imgs, 'label': [1, 0, 1]},
        features=datasets.Features(
            {'image': datasets.Image(), 'label': datasets.ClassLabel(names=['neg', 'pos'])}
        ),
    )
    ds.save_to_disk(str(tmp_path / 'ds'))
    src = make_source(f'datasets:{tmp_path / "ds"}')
    assert src.keys == ['train/0', 'train/1', 'train/2'] and src.label_names == ['pos', 'neg', 'pos']
    extract_source(
        FeatureExtractor(MODEL, img_size=32, device='cpu'),
        src,
        tmp_path / 'f.parquet',
        num_workers=0,
        progress=False,
    )
    ff = read_features(tmp_path / 'f.parquet')
    assert ff.features.shape == (3, 512) and ff.label_names() == ['pos', 'neg', 'pos']


def test_cli_harness(tmp_path, capsys):
    _write_rgb(tmp_path / 'in' / 'a' / 'x.png')
    _write_rgb(tmp_path / 'in' / 'b' / 'y.png', seed=1)
    (tmp_path / 'in' / 'b' / 'z.jpg').write_bytes(b'')
    parser = argparse.ArgumentParser(prog='mtdp')
    add_cli(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(
        [
            'extract',
            '--model',
            MODEL,
            '--input',
            str(tmp_path / 'in'),
            '--output',
            str(tmp_path / 'f.safetensors'),
            '--img-size',
            '32',
            '--workers',
            '0',
            '--no-progress',
        ]
    )
    assert args.func(args) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats['n_new'] == 2 and stats['n_failed'] == 1 and stats['img_per_s'] > 0
    assert read_features(tmp_path / 'f.safetensors').label_names() == ['a', 'b']


def test_provenance_records_hub_revision_offline(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import timm
    from timm.models import save_for_hf

    from tests.conftest import populate_hf_cache

    save_for_hf(
        timm.create_model('test_resnet', pretrained=False, num_classes=0),
        tmp_path / 'm',
        safe_serialization=True,
    )
    snapshot = populate_hf_cache(tmp_path / 'hf', 'someorg/tiny', tmp_path / 'm', commit='c' * 40)
    monkeypatch.setattr(hf_constants, 'HF_HUB_CACHE', str(tmp_path / 'hf'))
    monkeypatch.setattr(hf_constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    ext = FeatureExtractor('hf-hub:someorg/tiny', img_size=32, device='cpu')
    weights = ext.provenance()['weights']
    assert weights['source'] == 'hf-hub' and weights['revision'] == 'c' * 40
    assert weights['sha256'] == hashlib.sha256((snapshot / 'model.safetensors').read_bytes()).hexdigest()


def test_worker_processes_give_same_rows_and_failures(tmp_path):
    for i in range(5):
        _write_rgb(tmp_path / 'in' / 'a' / f'{i}.png', seed=i)
    (tmp_path / 'in' / 'a' / 'bad.jpg').write_bytes(b'')
    extract_features(MODEL, tmp_path / 'in', tmp_path / 'w0.safetensors', **FAST)
    extract_features(
        MODEL, tmp_path / 'in', tmp_path / 'w2.safetensors', **dict(FAST, num_workers=2, batch_size=2)
    )
    a, b = read_features(tmp_path / 'w0.safetensors'), read_features(tmp_path / 'w2.safetensors')
    assert a.paths == b.paths and a.failed == b.failed == {'a/bad.jpg': 'empty file (0 bytes)'}
    np.testing.assert_allclose(a.features, b.features, atol=1e-5)


def test_source_mpp_rescales_patches_to_the_wanted_scale(tmp_path):
    """0.25 um/px tiles wanted at 0.5 um/px: the same features as the tiles halved beforehand."""
    src = tmp_path / 'src' / 'TUMOR'
    half = tmp_path / 'half' / 'TUMOR'
    src.mkdir(parents=True)
    half.mkdir(parents=True)
    for p in sorted((KATHER / '01_TUMOR').iterdir()):
        im = Image.open(p).convert('RGB')
        im.save(src / f'{p.stem}.png')
        im.resize((75, 75), Image.BILINEAR).save(half / f'{p.stem}.png')
    kw = dict(FAST, img_size=48)
    extract_features(MODEL, tmp_path / 'src', tmp_path / 'a.safetensors', source_mpp=0.25, mpp=0.5, **kw)
    extract_features(MODEL, tmp_path / 'half', tmp_path / 'b.safetensors', **kw)
    a, b = read_features(tmp_path / 'a.safetensors'), read_features(tmp_path / 'b.safetensors')
    np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    assert (
        a.provenance['preprocessing']['source_mpp'] == 0.25
        and a.provenance['preprocessing']['target_mpp'] == 0.5
    )
    with pytest.raises(ValueError, match='records no input scale'):
        extract_features(
            'random:mtdp_resnet50', tmp_path / 'src', tmp_path / 'c.safetensors', source_mpp=0.25, **kw
        )
