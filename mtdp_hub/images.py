"""Open any image patch as 8-bit RGB, or fail with an error that names the file.

Shared by feature extraction (:mod:`mtdp_hub.features`), task folders (:mod:`mtdp_hub.tasks`) and
the training data pipeline. Conversions:

- grey (``L``, ``1``) and ``YCbCr``/``LAB``/``HSV``: Pillow's own conversion to RGB;
- ``CMYK`` (print JPEGs): Pillow's CMYK -> RGB conversion (no ICC colour management);
- ``RGBA``/``LA``/palette with transparency: **composited onto white**, the colour of an empty
  glass slide, so transparent margins read as background instead of whatever RGB values the
  exporter left under alpha 0 (often black). Opaque pixels are unchanged;
- 16-bit (``I;16*``, and ``I``, which Pillow uses for 16-bit PNG/TIFF): scaled to 8 bits by
  ``>> 8`` (``value // 256``), not clipped at 255 as a bare ``convert('L')`` would do;
- 32-bit float (``F``): values in [0, 1] are scaled by 255, larger ranges are clipped to [0, 255].

Multi-frame files (TIFF pages, GIF) give their first frame. An image larger than
:data:`MAX_PIXELS` (width x height, read from the header) is refused before it is decoded: a
tiny compressed file can hold a 13000x13000 16-bit image that takes gigabytes to decode. Anything Pillow cannot decode
(zero-byte file, truncated JPEG, a text file named ``.jpg``) raises :class:`UnreadableImageError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import UnreadableImageError

__all__ = [
    'IMAGE_EXTENSIONS',
    'UnreadableImageError',
    'open_rgb',
    'to_rgb',
    'check_image',
    'check_images',
    'find_images',
    'is_image_file',
    'is_hidden',
    'MAX_PIXELS',
]

MAX_PIXELS = 50_000_000
"""The largest image (width x height) :func:`open_rgb` decodes; larger ones raise
:class:`UnreadableImageError` before decoding. Patches are far smaller; set the module attribute to
change it."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {'.jpg', '.jpeg', '.png', '.tif', '.tiff', '.bmp', '.webp', '.gif', '.ppm', '.pgm'}
)
"""Lower-case file suffixes treated as images (compared case-insensitively)."""

_BACKGROUND = (255, 255, 255)  # transparent pixels become slide background (white)


_HIDDEN_NAMES = frozenset({'__MACOSX'})


def is_hidden(name: str) -> bool:
    """True for names that tools leave behind and that are never data: dot-names
    (``.ipynb_checkpoints``, ``.DS_Store``, ``._x.png``) and ``__MACOSX``."""
    return name.startswith('.') or name in _HIDDEN_NAMES


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the suffix is one of :data:`IMAGE_EXTENSIONS` and the name is not hidden."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p.name)


def find_images(root: str | os.PathLike) -> list[Path]:
    """All image files under ``root``, recursively, in sorted order.

    Hidden folders (:func:`is_hidden`) are not entered; symlinked files and folders are
    followed (each real folder is visited once, so a link loop ends).
    """
    root = Path(root)
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not is_hidden(d)]
        found += [
            Path(folder) / f for f in files if is_image_file(f) and os.path.isfile(os.path.join(folder, f))
        ]
    return sorted(found)


def _composite_on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert('RGBA')
    background = Image.new('RGBA', rgba.size, _BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert('RGB')


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an already opened (decoded) image to a new mode ``'RGB'`` image, as described above."""
    mode = im.mode
    if mode == 'RGB':
        return im.copy()
    if mode == 'P':
        has_alpha = 'transparency' in im.info or im.palette is not None and im.palette.mode == 'RGBA'
        return _composite_on_white(im) if has_alpha else im.convert('RGB')
    if mode in ('RGBA', 'LA', 'La', 'RGBa', 'PA'):
        return _composite_on_white(im)
    if mode.startswith('I;16') or mode == 'I':
        a = np.asarray(im).astype(np.int64)
        a8 = (np.clip(a, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(a8).convert('RGB')
    if mode == 'F':
        a = np.asarray(im, dtype=np.float64)
        finite_max = np.nanmax(a) if a.size else 0.0
        scale = 255.0 if finite_max <= 1.0 else 1.0
        a8 = np.clip(np.nan_to_num(a) * scale, 0, 255).round().astype(np.uint8)
        return Image.fromarray(a8).convert('RGB')
    return im.convert('RGB')  # L, 1, CMYK, YCbCr, LAB, HSV


def open_rgb(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully and return it as a mode ``'RGB'`` image (file closed on return).

    Raises :class:`UnreadableImageError` (a ``ValueError``) naming the file and the reason when
    the file is missing, empty, not an image, truncated or otherwise undecodable.
    """
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise UnreadableImageError(path, f'cannot access file ({e.strerror or e})') from e
    if size == 0:
        raise UnreadableImageError(path, 'empty file (0 bytes)')
    try:
        with Image.open(path) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > MAX_PIXELS:
                raise UnreadableImageError(
                    path, f'too large: {w}x{h} = {w * h} pixels, over the limit of {MAX_PIXELS} (MAX_PIXELS)'
                )
            im.load()  # decode now: a truncated file fails here, not later in a worker
            return to_rgb(im)
    except UnreadableImageError:
        raise
    except UnidentifiedImageError as e:
        raise UnreadableImageError(path, 'not a recognised image format') from e
    except Image.DecompressionBombError as e:
        raise UnreadableImageError(path, f'too large to decode safely ({e})') from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        # Pillow raises OSError('image file is truncated ...'), SyntaxError for broken headers, ...
        raise UnreadableImageError(path, f'{type(e).__name__}: {e}') from e


def check_image(path: str | os.PathLike, *, min_size: int | None = None) -> str | None:
    """``None`` when ``path`` decodes (and is at least ``min_size`` px on its short side), else why not."""
    try:
        im = open_rgb(path)
    except UnreadableImageError as e:
        return e.reason
    if min_size is not None and min(im.size) < min_size:
        return f'smaller than {min_size} px ({im.size[0]}x{im.size[1]})'
    return None


def check_images(paths: Iterable[str | os.PathLike], *, min_size: int | None = None) -> dict[str, str]:
    """``{path: reason}`` for every path in ``paths`` that fails :func:`check_image`."""
    bad = {}
    for p in paths:
        reason = check_image(p, min_size=min_size)
        if reason is not None:
            bad[str(p)] = reason
    return bad
