"""mtdp_hub.images: every awkward patch format becomes correct 8-bit RGB, or a named error."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image

from mtdp_hub.images import (
    IMAGE_EXTENSIONS,
    UnreadableImageError,
    check_image,
    check_images,
    find_images,
    open_rgb,
)


def _rgb_array(h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip_exact(tmp_path):
    a = _rgb_array()
    Image.fromarray(a).save(tmp_path / 'x.png')
    im = open_rgb(tmp_path / 'x.png')
    assert im.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(im), a)


def test_grey_png_replicated_to_three_channels(tmp_path):
    g = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    Image.fromarray(g, mode='L').save(tmp_path / 'g.png')
    out = np.asarray(open_rgb(tmp_path / 'g.png'))
    assert out.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g)


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((2, 2, 4), dtype=np.uint8)
    a[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    a[0, 1] = (0, 0, 0, 0)  # transparent black: white background
    a[1, 0] = (0, 0, 0, 128)  # half transparent black: mid grey
    a[1, 1] = (200, 100, 0, 0)  # transparent colour: white, colour ignored
    Image.fromarray(a, mode='RGBA').save(tmp_path / 'a.png')
    out = np.asarray(open_rgb(tmp_path / 'a.png')).astype(int)
    assert tuple(out[0, 0]) == (10, 20, 30)
    assert tuple(out[0, 1]) == (255, 255, 255)
    assert all(abs(v - 127) <= 1 for v in out[1, 0])
    assert tuple(out[1, 1]) == (255, 255, 255)


def test_palette_png_and_palette_with_transparency(tmp_path):
    p = Image.new('P', (2, 1))
    p.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / 'p.png')
    out = np.asarray(open_rgb(tmp_path / 'p.png'))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (0, 0, 255)
    p.save(tmp_path / 'pt.png', transparency=1)  # index 1 transparent -> white
    out = np.asarray(open_rgb(tmp_path / 'pt.png'))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


def test_cmyk_jpeg_converted(tmp_path):
    cmyk = Image.new('CMYK', (16, 16), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((255, 0, 0, 0), (0, 0, 8, 16))  # full cyan: (0, 255, 255)
    cmyk.save(tmp_path / 'c.jpg', quality=100)
    with Image.open(tmp_path / 'c.jpg') as raw:
        assert raw.mode == 'CMYK'
    out = np.asarray(open_rgb(tmp_path / 'c.jpg')).astype(int)
    assert out.shape == (16, 16, 3)
    np.testing.assert_allclose(out[8, 2], (0, 255, 255), atol=12)
    np.testing.assert_allclose(out[8, 13], (255, 255, 255), atol=12)


@pytest.mark.parametrize('suffix', ['.tif', '.png'])
def test_16bit_single_channel_scaled_by_shift_8(tmp_path, suffix):
    v = np.array([[0, 255, 256, 1000], [32768, 65280, 65535, 12345]], dtype=np.uint16)
    Image.fromarray(v).save(tmp_path / f'x16{suffix}')
    out = np.asarray(open_rgb(tmp_path / f'x16{suffix}'))
    assert out.dtype == np.uint8 and out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[..., 0], v >> 8)
    np.testing.assert_array_equal(out[..., 1], out[..., 2])


def test_single_channel_8bit_tiff(tmp_path):
    g = np.full((5, 7), 77, dtype=np.uint8)
    Image.fromarray(g, mode='L').save(tmp_path / 'g.tif')
    out = np.asarray(open_rgb(tmp_path / 'g.tif'))
    assert out.shape == (5, 7, 3) and (out == 77).all()


def test_float_tiff_unit_range_scaled(tmp_path):
    f = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    Image.fromarray(f, mode='F').save(tmp_path / 'f.tif')
    out = np.asarray(open_rgb(tmp_path / 'f.tif'))
    np.testing.assert_array_equal(out[0, :, 0], [0, 128, 255])


def test_zero_byte_file_raises_naming_file(tmp_path):
    p = tmp_path / 'empty.jpg'
    p.write_bytes(b'')
    with pytest.raises(UnreadableImageError) as ei:
        open_rgb(p)
    assert str(p) in str(ei.value) and 'empty' in ei.value.reason
    assert isinstance(ei.value, ValueError)


def test_truncated_jpeg_raises(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_rgb_array(64, 64)).save(buf, format='JPEG')
    p = tmp_path / 'trunc.jpg'
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(UnreadableImageError, match='trunc.jpg') as ei:
        open_rgb(p)
    assert 'truncated' in ei.value.reason


def test_text_file_with_image_extension_raises(tmp_path):
    p = tmp_path / 'notes.png'
    p.write_text('this is not an image\n')
    with pytest.raises(UnreadableImageError, match='notes.png') as ei:
        open_rgb(p)
    assert 'not a recognised image' in ei.value.reason


def test_missing_file_raises(tmp_path):
    with pytest.raises(UnreadableImageError, match='nope.png'):
        open_rgb(tmp_path / 'nope.png')


def test_error_pickles_for_dataloader_workers():
    e = pickle.loads(pickle.dumps(UnreadableImageError('/a/b.jpg', 'why')))
    assert e.path == '/a/b.jpg' and e.reason == 'why' and '/a/b.jpg' in str(e)


def test_check_image_reason_and_min_size(tmp_path):
    Image.fromarray(_rgb_array(10, 12)).save(tmp_path / 'small.png')
    (tmp_path / 'bad.jpg').write_bytes(b'\xff\xd8garbage')
    assert check_image(tmp_path / 'small.png') is None
    assert 'smaller than 16' in check_image(tmp_path / 'small.png', min_size=16)
    assert check_image(tmp_path / 'bad.jpg')
    bad = check_images([tmp_path / 'small.png', tmp_path / 'bad.jpg'])
    assert list(bad) == [str(tmp_path / 'bad.jpg')]


def test_find_images_recursive_sorted_case_insensitive(tmp_path):
    (tmp_path / 'b' / 'c').mkdir(parents=True)
    for rel in ['b/c/z.PNG', 'a.jpg', 'b/y.TIF', 'b/readme.txt', '.hidden.jpg']:
        (tmp_path / rel).write_bytes(b'x')
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ['a.jpg', 'b/c/z.PNG', 'b/y.TIF']
    assert {'.jpg', '.png', '.tif', '.tiff'} <= IMAGE_EXTENSIONS


def test_pixel_budget_refuses_large_images_before_decoding(tmp_path, monkeypatch):
    from PIL import ImageFile

    import mtdp_hub.images as images_mod

    Image.fromarray(_rgb_array(40, 50)).save(tmp_path / 'big.png')
    monkeypatch.setattr(images_mod, 'MAX_PIXELS', 1000)
    loads = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self: loads.append(1) or real_load(self))
    with pytest.raises(UnreadableImageError, match=r'big\.png.*50x40.*1000'):
        open_rgb(tmp_path / 'big.png')
    assert loads == []  # refused from the header, nothing decoded
    monkeypatch.setattr(images_mod, 'MAX_PIXELS', 2000)
    assert open_rgb(tmp_path / 'big.png').size == (50, 40)
