"""mtdp slides on real slides written here: OpenSlide, MPP, levels, tile geometry, features, files, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from mtdp_hub import _io
from mtdp_hub.cli import main as mtdp
from mtdp_hub.errors import InvalidOptionError
from mtdp_hub.features import FeatureExtractor, extract_features, read_features
from mtdp_hub.features.slides import (
    Slide,
    SlideError,
    SlideSettings,
    TileSpec,
    extract_slide,
    iterate_tiles,
    list_slides,
    mpp_of_magnification,
    read_slide_features,
    run_slides,
    tile_grid,
)
from mtdp_hub.features.slides.run import _lock
from tests.conftest import REPO_ROOT

MODEL = 'random:resnet18'
FAST = dict(img_size=64, device='cpu')


@pytest.fixture(scope='module')
def extractor():
    return FeatureExtractor(MODEL, **FAST)


def test_openslide_reads_svs_and_tiff_with_their_scale(slide_dir, nompp_slide):
    with Slide(slide_dir / 'alpha.svs') as a, Slide(slide_dir / 'beta.tif') as b:
        assert (a.mpp, b.mpp) == (1.0, 0.5)
        assert a.dimensions == (3072, 2048) and a.level_downsamples == (1.0, 2.0, 4.0)
        assert [a.best_level(d) for d in (1.0, 1.5, 2.0, 3.0, 4.0, 10.0)] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(SlideError, match=r'nompp\.tif.*no microns per pixel.*--slide-mpp'):
        Slide(nompp_slide)
    with Slide(nompp_slide, mpp=0.25) as s:
        assert s.mpp == 0.25


def test_slide_lists_from_a_folder_or_a_csv(slide_dir, nompp_slide, tmp_path):
    assert [(e.slide_id, e.mpp) for e in list_slides(slide_dir)] == [('alpha', None), ('beta', None)]
    (tmp_path / 'list.csv').write_text(
        f'path,slide_id,mpp,label\n{slide_dir / "alpha.svs"},A1,,tumour\nnompp.tif,N1,0.25,normal\n'
    )
    entries = list_slides(tmp_path / 'list.csv', slide_mpp=2.0)
    assert [(e.slide_id, e.mpp, e.label) for e in entries] == [('A1', 2.0, 'tumour'), ('N1', 0.25, 'normal')]
    assert entries[1].path == nompp_slide
    (tmp_path / 'bad.csv').write_text('file,mpp\nx.svs,1\n')
    with pytest.raises(InvalidOptionError, match=r'bad\.csv.*"path" column'):
        list_slides(tmp_path / 'bad.csv')
    assert mpp_of_magnification('20x') == 0.5 and mpp_of_magnification(40) == 0.25


@pytest.mark.parametrize(
    'mpp, level, size0, read_size', [(1.0, 0, 64, 64), (2.0, 1, 128, 64), (3.0, 1, 192, 96)]
)
def test_tile_geometry_at_two_scales_and_levels(svs, mpp, level, size0, read_size):
    spec = TileSpec(mpp=mpp, tile=64, overlap=16, min_tissue=0.5)
    with Slide(svs.path) as slide:
        grid = tile_grid(slide, spec, lambda x0, y0, s: _exact_fraction(svs.blocks, x0, y0, s))
    assert (grid.level, grid.size0, grid.read_size) == (level, size0, read_size)
    stride0 = round(48 * mpp)
    assert (grid.coords % stride0 == 0).all() and grid.coords.dtype == np.int64
    every = [(x, y) for y in range(0, 2048 - size0 + 1, stride0) for x in range(0, 3072 - size0 + 1, stride0)]
    want = [
        xy for xy in every if _exact_fraction(svs.blocks, *map(np.array, ([xy[0]], [xy[1]])), size0)[0] >= 0.5
    ]
    assert [tuple(c) for c in grid.coords] == want and len(want) > 10
    assert grid.attrs()['patch_size_level0'] == size0 and grid.read_mpp == svs.mpp * 2**level


def _exact_fraction(blocks, x0, y0, size0):
    out = np.zeros(len(x0))
    for bx0, by0, bx1, by1 in blocks:
        w = np.clip(np.minimum(x0 + size0, bx1) - np.maximum(x0, bx0), 0, None)
        h = np.clip(np.minimum(y0 + size0, by1) - np.maximum(y0, by0), 0, None)
        out += w * h / size0**2
    return out


def test_segmentation_keeps_the_tissue_tiles(svs, extractor, tmp_path):
    settings = SlideSettings(tiles=TileSpec(mpp=2.0, tile=64, min_tissue=0.5))
    row = extract_slide(extractor, list_slides(svs.path)[0], tmp_path, settings)
    sf = read_slide_features(tmp_path / 'alpha.h5')
    truth = _exact_fraction(svs.blocks, sf.coords[:, 0], sf.coords[:, 1], 128)
    assert row['status'] == 'done' and row['tiles'] == len(sf.coords) > 10
    assert (truth > 0.3).all()  # nothing from the white background
    inside = [
        (x, y)
        for y in range(0, 2048 - 127, 128)
        for x in range(0, 3072 - 127, 128)
        if _exact_fraction(svs.blocks, np.array([x]), np.array([y]), 128)[0] == 1
    ]
    assert set(inside) <= {tuple(c) for c in sf.coords}  # every tile wholly inside the tissue is kept
    assert 0.6 < row['tissue_mm2'] < 0.9  # the two blocks: 0.27 + 0.45 mm2


def test_tile_features_equal_mtdp_extract_on_the_tile_cut_out(svs, extractor, tmp_path):
    settings = SlideSettings(tiles=TileSpec(mpp=1.0, tile=64), qc=False)
    extract_slide(extractor, list_slides(svs.path)[0], tmp_path / 'f', settings)
    sf = read_slide_features(tmp_path / 'f' / 'alpha.h5')
    picks = [0, len(sf.coords) // 2, len(sf.coords) - 1]
    (tmp_path / 'tiles').mkdir()
    with Slide(svs.path) as slide:
        for i in picks:
            x, y = sf.coords[i]
            slide.read(x, y, 0, (64, 64)).save(
                tmp_path / 'tiles' / f'{i:04d}.png'
            )  # the tile as an image file
    extract_features(
        MODEL,
        tmp_path / 'tiles',
        tmp_path / 'cut.safetensors',
        labels=False,
        num_workers=0,
        progress=False,
        **FAST,
    )
    cut = read_features(tmp_path / 'cut.safetensors')
    np.testing.assert_allclose(cut.features, sf.features[picks], rtol=1e-4, atol=1e-5)


def test_h5_and_pt_files_hold_what_clam_and_trident_read(svs, extractor, tmp_path):
    for fmt in ('h5', 'pt'):
        settings = SlideSettings(tiles=TileSpec(mpp=2.0, tile=64), fmt=fmt, qc=False)
        extract_slide(extractor, list_slides(svs.path)[0], tmp_path, settings)
    with h5py.File(tmp_path / 'alpha.h5') as f:
        feats, coords = f['features'][:], f['coords'][:]
        assert feats.dtype == np.float32 and feats.shape == (len(coords), 512) and coords.dtype == np.int64
        assert f['coords'].attrs['patch_size'] == 64 and f['coords'].attrs['patch_level'] == 1
        assert f['coords'].attrs['patch_size_level0'] == 128 and f['coords'].attrs['target_mpp'] == 2.0
        meta = json.loads(f.attrs['mtdp_slides'])
    assert meta['model'] == MODEL and meta['slide']['mpp'] == 1.0 and meta['tissue']['seg_mpp'] == 8.0
    assert (
        meta['tiles']['tile'] == 64
        and 'openslide' in meta['versions']
        and meta['weights']['source'] == 'random-init'
    )
    pt = torch.load(tmp_path / 'alpha.pt', weights_only=True)  # plain tensors: safe to open
    np.testing.assert_array_equal(pt['features'].numpy(), feats)
    np.testing.assert_array_equal(pt['coords'].numpy(), coords)


def test_iterate_tiles_gives_level0_coordinates_and_tiles(svs):
    with Slide(svs.path) as slide:
        tiles = list(iterate_tiles(slide, SlideSettings(tiles=TileSpec(mpp=3.0, tile=40))))
    assert len(tiles) > 5 and all(t.size == (40, 40) and t.mode == 'RGB' for _, t in tiles)
    (x, y), tile = tiles[0]
    expected = Image.fromarray(svs.image[y : y + 120, x : x + 120]).resize((40, 40), Image.BILINEAR)
    assert (
        np.abs(np.asarray(tile, float) - np.asarray(expected, float)).mean() < 6
    )  # JPEG and pyramid rounding


def test_run_reports_bad_slides_resumes_and_writes_qc(slide_dir, nompp_slide, truncated_slide, tmp_path):
    folder = tmp_path / 'in'
    folder.mkdir()
    for p in (slide_dir / 'alpha.svs', nompp_slide, truncated_slide):
        shutil.copy(p, folder / p.name)
    out = tmp_path / 'out'
    settings = SlideSettings(tiles=TileSpec(mpp=2.0, tile=64))
    kw = dict(extractor_kwargs=FAST, num_workers=0, log=lambda line: None)
    rows = {r['slide_id']: r for r in run_slides(MODEL, folder, out, settings, **kw)}
    assert rows['alpha']['status'] == 'done' and rows['alpha']['tiles'] > 10
    assert rows['nompp']['status'] == 'error' and '--slide-mpp' in rows['nompp']['error']
    assert rows['broken']['status'] == 'error' and 'broken.tif' in rows['broken']['error']
    report = json.loads((out / 'report.json').read_text())['slides']
    assert {r['slide_id'] for r in report} == {'alpha', 'broken', 'nompp'}
    assert (out / 'report.csv').read_text().splitlines()[0].startswith('slide_id,path,status,tiles')
    assert Image.open(out / 'qc' / 'alpha.png').size[0] > 100
    assert json.loads((out / 'qc' / 'alpha.geojson').read_text())['type'] == 'FeatureCollection'
    assert not [p for p in out.rglob('*') if _io.PARTIAL_MARK in p.name or p.suffix == '.lock']

    before = (out / 'alpha.h5').stat().st_mtime_ns
    rows = {r['slide_id']: r for r in run_slides(MODEL, folder, out, settings, slide_mpp=1.0, **kw)}
    assert rows['alpha']['status'] == 'skipped (done)' and (out / 'alpha.h5').stat().st_mtime_ns == before
    assert rows['nompp']['status'] == 'done'  # --slide-mpp gave it a scale
    other = SlideSettings(tiles=TileSpec(mpp=2.0, tile=32))
    rows = {r['slide_id']: r for r in run_slides(MODEL, folder, out, other, slide_mpp=1.0, **kw)}
    assert rows['alpha']['status'] == 'error' and 'other settings (tiles)' in rows['alpha']['error']


def test_partial_files_of_killed_runs_are_cleaned_and_locks_are_honoured(slide_dir, tmp_path):
    out = tmp_path / 'out'
    out.mkdir()
    dead = int(
        subprocess.run(
            [sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True
        ).stdout
    )
    partial = out / f'.alpha.h5{_io.PARTIAL_MARK}{dead}-beef.h5'
    partial.write_bytes(b'half a file')
    (out / '.beta.lock').write_text(f'{dead} {os.uname().nodename}')  # left by a dead job: taken over
    held = _lock(out, 'alpha')  # a live job holds alpha
    rows = {
        r['slide_id']: r
        for r in run_slides(
            MODEL,
            slide_dir,
            out,
            SlideSettings(tiles=TileSpec(mpp=2.0, tile=64)),
            extractor_kwargs=FAST,
            num_workers=0,
            log=lambda line: None,
        )
    }
    assert rows['alpha']['status'] == 'skipped (locked by another job)' and not (out / 'alpha.h5').exists()
    assert rows['beta']['status'] == 'done' and not partial.exists()
    held.unlink()


def test_cli_scale_options(slide_dir, tmp_path, capsys):
    code = mtdp(
        [
            'slides',
            '--model',
            MODEL,
            '--slides',
            str(slide_dir / 'beta.tif'),
            '--out',
            str(tmp_path),
            '--mag',
            '5x',
            '--tile',
            '64',
            '--img-size',
            '64',
            '--device',
            'cpu',
            '--workers',
            '0',
            '--no-qc',
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)['done'] == 1
    assert '1/1 beta: done' in captured.err and '\r' not in captured.err
    sf = read_slide_features(tmp_path / 'beta.h5')
    assert (
        sf.attrs['target_mpp'] == 2.0
        and sf.attrs['patch_size_level0'] == 256
        and sf.attrs['patch_level'] == 2
    )
    args = ['slides', '--model', MODEL, '--slides', str(slide_dir / 'beta.tif'), '--out', str(tmp_path)]
    args += ['--mag', '5x', '--tile', '64', '--img-size', '64', '--device', 'cpu', '--no-qc', '--no-progress']
    assert mtdp(args) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)['skipped (done)'] == 1 and 'beta' not in captured.err


@pytest.mark.slow
def test_two_torchrun_ranks_give_the_files_of_one(slide_dir, tmp_path):
    args = [
        '--model',
        MODEL,
        '--slides',
        str(slide_dir),
        '--mpp',
        '2',
        '--tile',
        '64',
        '--img-size',
        '64',
        '--device',
        'cpu',
        '--workers',
        '0',
        '--no-qc',
    ]
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    one = subprocess.run(
        [sys.executable, '-m', 'mtdp_hub.slides', *args, '--out', str(tmp_path / 'one')],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [
            sys.executable,
            '-m',
            'torch.distributed.run',
            '--nproc_per_node=2',
            '--standalone',
            '-m',
            'mtdp_hub.slides',
            *args,
            '--out',
            str(tmp_path / 'two'),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    for name in ('alpha', 'beta'):
        a, b = (
            read_slide_features(tmp_path / 'one' / f'{name}.h5'),
            read_slide_features(tmp_path / 'two' / f'{name}.h5'),
        )
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_allclose(a.features, b.features, rtol=1e-5, atol=1e-6)
    report = json.loads((tmp_path / 'two' / 'report.json').read_text())['slides']
    assert sorted((r['slide_id'], r['rank']) for r in report) == [('alpha', 0), ('beta', 1)]
    assert not list((tmp_path / 'two').glob('.report.rank*'))
