"""Tissue segmenter, tissue polygons / GeoJSON, tile tissue fractions and the QC pictures, on small real inputs:
a thumbnail made of the repository's real H&E tiles on a white background, and hand-made masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from mtdp_hub.features.slides.qc import CONTOUR_COLOR, TILE_COLOR, qc_image, write_qc
from mtdp_hub.features.slides.tissue import (
    TissueSettings,
    segment_tissue,
    tissue_fraction,
    tissue_geojson,
    tissue_polygons,
)
from tests.conftest import KATHER_ASSETS

TISSUE_CLASSES = ('01_TUMOR', '02_STROMA', '03_COMPLEX', '04_LYMPHO', '05_DEBRIS', '06_MUCOSA')
MPP = 8.0  # um per thumbnail px: closing radius 4 px, regions < 781 px dropped, holes < 312.5 px filled
PINK = (200, 120, 180)


def noisy(shape: tuple[int, ...], value, seed: int = 0, amp: int = 3) -> np.ndarray:
    """A uint8 array of ``value`` plus uniform noise in [-amp, amp]."""
    rng = np.random.default_rng(seed)
    base = np.broadcast_to(np.asarray(value, np.int16), shape)
    return np.clip(base + rng.integers(-amp, amp + 1, shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def mosaic() -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 600 x 800 white thumbnail with a 3 x 4 mosaic of real H&E tiles (75 px each) at rows 150-375,
    columns 200-500; returns the image and the mosaic (row0, row1, col0, col1)."""
    tiles = [
        np.asarray(Image.open(p).convert('RGB').resize((75, 75), Image.Resampling.BILINEAR))
        for c in TISSUE_CLASSES
        for p in sorted((KATHER_ASSETS / c).iterdir())
    ]
    assert len(tiles) == 18
    canvas = noisy((600, 800, 3), 245)
    for k in range(12):
        r, c = divmod(k, 4)
        canvas[150 + 75 * r : 225 + 75 * r, 200 + 75 * c : 275 + 75 * c] = tiles[(5 * k) % 18]
    return canvas, (150, 375, 200, 500)


def pink_block(shape=(300, 400), rows=(50, 250), cols=(100, 300), seed: int = 0) -> np.ndarray:
    """White noisy thumbnail with one solid pink (noisy) tissue rectangle."""
    img = noisy((*shape, 3), 245, seed)
    img[rows[0] : rows[1], cols[0] : cols[1]] = noisy(
        (rows[1] - rows[0], cols[1] - cols[0], 3), PINK, seed + 1
    )
    return img


# --- segment_tissue ----------------------------------------------------------------------------------
def test_mosaic_of_real_tissue_is_found_and_background_is_not(mosaic):
    image, (r0, r1, c0, c1) = mosaic
    mask = segment_tissue(image, MPP)
    assert mask.shape == image.shape[:2] and mask.dtype == bool
    inside = np.zeros(mask.shape, bool)
    inside[r0:r1, c0:c1] = True
    assert mask[inside].mean() >= 0.9
    assert mask[~inside].mean() <= 0.02
    assert ndi.label(mask, np.ones((3, 3)))[1] == 1  # one piece of tissue


def test_segmentation_is_deterministic(mosaic):
    image, _ = mosaic
    first = segment_tissue(image, MPP)
    again = segment_tissue(image.copy(), MPP)
    assert np.array_equal(first, again)
    assert first.any()


@pytest.mark.parametrize(
    'background',
    [
        noisy((300, 400, 3), 245),  # white glass with sensor noise
        np.full((300, 400, 3), 245, np.uint8),  # pure white
        np.full((300, 400, 3), 200, np.uint8),  # uniform light grey
        noisy((300, 400, 3), 215, seed=3),  # light grey with noise
        np.zeros((300, 400, 3), np.uint8),  # black scanner padding
        noisy((300, 400, 3), 4, seed=4, amp=4),  # near black with noise
    ],
    ids=['white-noise', 'white', 'grey', 'grey-noise', 'black', 'black-noise'],
)
def test_blank_thumbnails_have_no_tissue(background):
    assert not segment_tissue(background, MPP).any()


def test_pink_block_is_tissue_and_a_fixed_threshold_applies():
    image = pink_block()
    mask = segment_tissue(image, MPP)
    assert mask[50:250, 100:300].all()
    assert mask[49:251, 99:301].sum() == mask.sum()  # the blur widens the tissue by 1 px at most
    assert not segment_tissue(image, MPP, TissueSettings(threshold=254)).any()
    # pink is ~100: still tissue at a fixed 60, less the blurred corners
    higher = segment_tissue(image, MPP, TissueSettings(threshold=60))
    assert higher[51:249, 101:299].all() and not (higher & ~mask).any()


def test_specks_below_min_tissue_are_dropped_and_larger_blobs_kept():
    image = pink_block()
    image[10:20, 10:20] = PINK  # 100 px = 6400 um^2 < 50 000 um^2: a speck
    image[260:290, 340:370] = PINK  # 900 px = 57 600 um^2: kept
    mask = segment_tissue(image, MPP)
    assert not mask[:40, :40].any()
    assert mask[262:288, 342:368].all()
    # the same speck is kept when the minimum area allows it
    assert segment_tissue(image, MPP, TissueSettings(min_tissue_um2=1000))[12:18, 12:18].all()


def test_small_holes_are_filled_and_large_holes_kept():
    image = pink_block()
    image[80:92, 130:142] = 245  # 144 px = 9216 um^2 < 20 000 um^2: filled
    image[150:210, 200:260] = 245  # 3600 px: a real hole
    for close_um in (32.0, 0.0):  # by the hole filling, with or without the closing
        mask = segment_tissue(image, MPP, TissueSettings(close_um=close_um))
        assert mask[80:92, 130:142].all()
        assert not mask[155:205, 205:255].any()
    assert not segment_tissue(image, MPP, TissueSettings(close_um=0.0, min_hole_um2=0.0))[
        82:90, 132:140
    ].any()


def test_closing_joins_fragments_closer_than_its_radius():
    image = pink_block()
    image[50:250, 198:202] = 245  # a 4 px (32 um) gap splits the block
    assert segment_tissue(image, MPP)[60:240, 198:202].all()  # closing radius 32 um = 4 px
    assert not segment_tissue(image, MPP, TissueSettings(close_um=0.0))[60:240, 199:201].any()


def test_bad_inputs_are_value_errors():
    good = pink_block()
    for bad in (good.astype(np.float32), good[..., 0], good[..., :2], np.dstack([good, good[..., :1]])):
        with pytest.raises(ValueError, match='thumbnail'):
            segment_tissue(bad, MPP)
    with pytest.raises(ValueError, match='mpp'):
        segment_tissue(good, 0.0)
    with pytest.raises(ValueError, match='seg_mpp'):
        TissueSettings(seg_mpp=-1)
    with pytest.raises(ValueError, match='threshold'):
        TissueSettings(threshold=300)
    assert segment_tissue(np.zeros((0, 5, 3), np.uint8), MPP).shape == (0, 5)


def test_settings_to_dict_is_plain_json():
    settings = TissueSettings(threshold=25.0, close_um=16.0)
    d = settings.to_dict()
    assert json.loads(json.dumps(d)) == d
    assert d['threshold'] == 25.0 and d['close_um'] == 16.0 and d['seg_mpp'] == 8.0
    assert TissueSettings(**d) == settings


# --- tissue_fraction ---------------------------------------------------------------------------------
def half_mask() -> np.ndarray:
    mask = np.zeros((20, 20), bool)
    mask[:10] = True  # top half tissue
    return mask


def test_tissue_fraction_exact_values():
    scale = 4.0  # the 20 x 20 mask covers 80 x 80 level-0 px
    x0 = np.array([0, 0, 0, 40, 60, -20, 200, 0])
    y0 = np.array([0, 40, 20, 0, 0, 0, 0, -20])
    got = tissue_fraction(half_mask(), scale, x0, y0, 40)
    # inside, outside, half, inside, half out of the right edge, half out of the left edge, off the mask, half above
    want = [1.0, 0.0, 0.5, 1.0, 0.5, 0.5, 0.0, 0.5]
    assert got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_tissue_fraction_rounds_fractional_edges_outward():
    # x0 = y0 = 2 level-0 px = 0.5 mask px: mask pixels 0..10 (floor 0.5, ceil 10.5) -> 11 x 11, 10 rows tissue
    got = tissue_fraction(half_mask(), 4.0, np.array([2.0]), np.array([2.0]), 40)
    np.testing.assert_allclose(got, [10 / 11], atol=1e-6)
    # a non-representable scale: tiles on whole mask pixels still cover exactly 10 x 10 mask pixels
    scale = 0.1
    x0 = np.arange(0, 10) * scale
    got = tissue_fraction(half_mask(), scale, x0, np.zeros(10), 10 * scale)
    np.testing.assert_allclose(got, np.ones(10), atol=1e-6)
    got = tissue_fraction(half_mask(), scale, x0, np.full(10, 5 * scale), 10 * scale)
    np.testing.assert_allclose(got, np.full(10, 0.5), atol=1e-6)


def test_tissue_fraction_matches_brute_force_on_a_random_mask():
    rng = np.random.default_rng(7)
    mask = rng.random((37, 53)) > 0.6
    scale, size0 = 3.0, 25.0
    x0 = rng.uniform(-40, 53 * 3 + 10, 300)
    y0 = rng.uniform(-40, 37 * 3 + 10, 300)
    got = tissue_fraction(mask, scale, x0, y0, size0)
    for x, y, f in zip(x0, y0, got):
        c0, c1 = int(np.floor(x / scale)), int(np.ceil((x + size0) / scale))
        r0, r1 = int(np.floor(y / scale)), int(np.ceil((y + size0) / scale))
        inside = mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)].sum()
        assert f == pytest.approx(inside / ((c1 - c0) * (r1 - r0)), abs=1e-6)


def test_tissue_fraction_of_no_tiles_is_empty():
    got = tissue_fraction(half_mask(), 4.0, np.zeros(0), np.zeros(0), 40)
    assert got.shape == (0,) and got.dtype == np.float32


# --- polygons and GeoJSON ----------------------------------------------------------------------------
def shoelace(ring) -> float:
    xy = np.asarray(ring, float)
    return 0.5 * float(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))


def two_blobs() -> np.ndarray:
    mask = np.zeros((100, 120), bool)
    mask[10:40, 10:50] = True  # a rectangle
    yy, xx = np.mgrid[:100, :120]
    mask |= (yy - 70) ** 2 + (xx - 90) ** 2 <= 15**2  # a disk
    return mask


def test_polygons_one_per_region_with_level0_coordinates():
    scale = 4.0
    polys = tissue_polygons(two_blobs(), scale)
    assert len(polys) == 2
    boxes = []
    for poly in polys:
        ext = np.asarray(poly['exterior'])
        assert ext.shape[1] == 2 and len(ext) >= 4 and np.array_equal(ext[0], ext[-1])  # closed ring
        assert poly['holes'] == []
        assert shoelace(ext) > 0  # counter-clockwise by the shoelace sign
        boxes.append((ext[:, 0].min(), ext[:, 1].min(), ext[:, 0].max(), ext[:, 1].max()))
    rect = min(boxes)  # the rectangle starts further left; thumbnail columns 10-50, rows 10-40
    np.testing.assert_allclose(rect, np.array([10, 10, 50, 40]) * scale, atol=1 * scale)
    # contours run along pixel edges (the simplification cuts corners by half a pixel at most)
    np.testing.assert_allclose(rect, np.array([10, 10, 50, 40]) * scale, atol=0.5 * scale + 1e-6)
    disk = max(boxes)  # columns 75-106, rows 55-86
    np.testing.assert_allclose(disk, np.array([75, 55, 106, 86]) * scale, atol=1 * scale)
    # the coordinates are the thumbnail's, times the scale
    at_one = tissue_polygons(two_blobs(), 1.0)
    for a, b in zip(at_one, polys):
        np.testing.assert_allclose(np.asarray(a['exterior']) * scale, b['exterior'])


def test_polygon_of_one_pixel_covers_that_pixel_at_level0():
    mask = np.zeros((6, 8), bool)
    mask[3, 5] = True  # thumbnail pixel (row 3, column 5) covers level-0 [10, 12) x [6, 8) at scale 2
    (poly,) = tissue_polygons(mask, 2.0)
    ext = np.asarray(poly['exterior'])
    assert (ext[:, 0].min(), ext[:, 1].min(), ext[:, 0].max(), ext[:, 1].max()) == (10, 6, 12, 8)


def test_polygon_of_a_blob_with_a_large_hole_and_an_island():
    mask = np.zeros((80, 90), bool)
    mask[10:70, 10:80] = True
    mask[25:55, 30:60] = False  # a hole
    scale = 2.5
    polys = tissue_polygons(mask, scale)
    assert len(polys) == 1 and len(polys[0]['holes']) == 1
    hole = polys[0]['holes'][0]
    assert shoelace(hole) < 0 and hole[0] == hole[-1]
    area = shoelace(polys[0]['exterior']) + shoelace(hole)
    assert area == pytest.approx(mask.sum() * scale**2, rel=0.05)
    mask[35:45, 40:50] = True  # an island in the hole: a polygon of its own
    polys = tissue_polygons(mask, scale)
    assert len(polys) == 2 and sorted(len(p['holes']) for p in polys) == [0, 1]


def test_diagonal_neighbours_are_one_region_and_empty_mask_has_none():
    mask = np.zeros((20, 20), bool)
    mask[2:8, 2:8] = True
    mask[8:14, 8:14] = True  # touches the first square at a corner only
    polys = tissue_polygons(mask, 1.0)
    assert len(polys) == 1 and polys[0]['holes'] == []
    assert tissue_polygons(np.zeros((20, 20), bool), 1.0) == []
    assert tissue_geojson(np.zeros((20, 20), bool), 1.0) == {'type': 'FeatureCollection', 'features': []}


def test_geojson_is_a_qupath_feature_collection_that_round_trips():
    scale = 4.0
    gj = tissue_geojson(two_blobs(), scale, name='slide-7')
    assert json.loads(json.dumps(gj)) == gj
    assert gj['type'] == 'FeatureCollection' and len(gj['features']) == 2
    polys = tissue_polygons(two_blobs(), scale)
    for feature, poly in zip(gj['features'], polys):
        assert feature['type'] == 'Feature'
        assert feature['geometry'] == {'type': 'Polygon', 'coordinates': [poly['exterior'], *poly['holes']]}
        props = feature['properties']
        assert props['objectType'] == 'annotation' and props['name'] == 'slide-7'
        assert props['classification']['name'] == 'Tissue' and len(props['classification']['color']) == 3
    total = sum(shoelace(f['geometry']['coordinates'][0]) for f in gj['features'])
    assert total == pytest.approx(two_blobs().sum() * scale**2, rel=0.05)


# --- QC picture --------------------------------------------------------------------------------------
def test_qc_image_size_contour_and_tile_outlines():
    image = pink_block()  # 300 x 400, tissue rows 50-250, columns 100-300
    mask = segment_tissue(image, MPP)
    scale = 10.0  # level-0 px per thumbnail px
    x0, y0 = np.array([1500.0, 2000.0]), np.array([1000.0, 1500.0])  # thumbnail (150, 100) and (200, 150)
    img = qc_image(image, mask, x0, y0, 400.0, scale, max_side=200)
    assert img.mode == 'RGB' and img.size == (200, 150)  # longer side max_side, aspect kept
    px = np.asarray(img)
    # the first tile: picture columns 75-94, rows 50-69
    assert (px[50:70, 75] == TILE_COLOR).all() and (px[50:70, 94] == TILE_COLOR).all()
    assert (px[50, 75:95] == TILE_COLOR).all() and (px[69, 75:95] == TILE_COLOR).all()
    assert not (px[52:68, 77:93] == TILE_COLOR).all(axis=-1).any()  # outline only
    # the tissue contour: left edge of the tissue at picture column 50, rows 25-125
    assert ((px[40:110, 48:52] == CONTOUR_COLOR).all(axis=-1)).any(axis=1).all()
    assert not (px[:20, :] == CONTOUR_COLOR).all(axis=-1).any()  # nothing drawn on the background


def test_qc_image_keeps_small_thumbnails_and_tall_aspects():
    image = pink_block((500, 100), rows=(100, 400), cols=(20, 80))
    mask = segment_tissue(image, MPP)
    assert qc_image(image, mask, np.zeros(0), np.zeros(0), 10.0, 1.0).size == (100, 500)
    assert qc_image(image, mask, np.zeros(0), np.zeros(0), 10.0, 1.0, max_side=250).size == (50, 250)
    with pytest.raises(ValueError, match='thumbnail'):
        qc_image(image[..., 0], mask, np.zeros(0), np.zeros(0), 10.0, 1.0)


def test_write_qc_writes_png_and_geojson_atomically(tmp_path, mosaic):
    image, _ = mosaic
    mask = segment_tissue(image, MPP)
    scale, size0 = 16.0, 448.0
    yy, xx = np.mgrid[0 : 600 * 16 : 448, 0 : 800 * 16 : 448]
    keep = tissue_fraction(mask, scale, xx.ravel(), yy.ravel(), size0) >= 0.5
    assert keep.sum() > 50
    folder = tmp_path / 'qc'
    png, geo = folder / 'slide.png', folder / 'slide.geojson'
    for _ in range(2):  # writes, then replaces
        write_qc(png, geo, image, mask, xx.ravel()[keep], yy.ravel()[keep], size0, scale, 'slide')
    with Image.open(png) as img:
        assert img.format == 'PNG' and img.size == (800, 600)
        assert (np.asarray(img.convert('RGB')) == TILE_COLOR).all(axis=-1).sum() > 1000
    gj = json.loads(geo.read_text(encoding='utf-8'))
    assert gj['type'] == 'FeatureCollection' and len(gj['features']) >= 1
    assert gj['features'][0]['properties']['name'] == 'slide'
    ext = np.asarray(gj['features'][0]['geometry']['coordinates'][0])
    assert ext[:, 0].min() == pytest.approx(200 * scale, abs=2 * scale)  # level-0 px
    assert sorted(p.name for p in folder.iterdir()) == ['slide.geojson', 'slide.png']  # no temporary left
