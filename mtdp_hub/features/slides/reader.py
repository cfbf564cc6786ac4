"""Whole-slide images through OpenSlide: the slide list, the physical scale, pyramid levels, tile reads.

OpenSlide (the ``openslide-python`` package with the ``openslide-bin`` wheel, no system library)
reads SVS, generic tiled / pyramidal TIFF, NDPI, MRXS, SCN, BIF, VMS and more. A slide's scale is
its microns per pixel (MPP) at level 0, from its metadata (``openslide.mpp-x``), or given by the
slide list or ``--slide-mpp``; a slide with neither is an error that names it: guessing a scale
would silently give features at the wrong magnification.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide
from PIL import Image

from ...errors import InputNotFoundError, InvalidOptionError, MtdpError

__all__ = [
    'SLIDE_EXTENSIONS',
    'SlideError',
    'SlideEntry',
    'Slide',
    'list_slides',
    'mpp_of_magnification',
]

SLIDE_EXTENSIONS = frozenset(
    {'.svs', '.tif', '.tiff', '.ndpi', '.mrxs', '.scn', '.bif', '.vms', '.vmu', '.svslide', '.dcm'}
)
_CSV_COLUMNS = {'path', 'slide_id', 'mpp', 'label'}


class SlideError(MtdpError, ValueError):
    """A slide that cannot be used (unreadable, truncated, without a known scale); the message names it."""


def mpp_of_magnification(mag: str | float) -> float:
    """``'20x'`` (or 20) -> 0.5 um/px: the usual convention, 10 um/px divided by the objective power."""
    text = str(mag).strip().lower().removesuffix('x')
    try:
        power = float(text)
    except ValueError:
        raise InvalidOptionError(f'magnification must look like 20x or 40, not {mag!r}') from None
    if power <= 0:
        raise InvalidOptionError(f'magnification must be positive, not {mag!r}')
    return 10.0 / power


@dataclass(frozen=True)
class SlideEntry:
    """One line of a slide list: the file, its id (output name), an optional MPP override and label."""

    path: Path
    slide_id: str
    mpp: float | None = None
    label: str | None = None


def _positive_float(value: str, where: str) -> float | None:
    if value is None or str(value).strip() == '':
        return None
    try:
        x = float(value)
    except ValueError:
        raise InvalidOptionError(f'{where}: mpp {value!r} is not a number') from None
    if not x > 0:
        raise InvalidOptionError(f'{where}: mpp must be positive, got {value!r}')
    return x


def _read_csv(path: Path) -> list[SlideEntry]:
    with open(path, newline='', encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0]) if rows else set()
    if 'path' not in columns:
        raise InvalidOptionError(
            f'{path}: a slide list needs a "path" column (optional: slide_id, mpp, label)'
        )
    unknown = columns - _CSV_COLUMNS
    if unknown:
        raise InvalidOptionError(f'{path}: unknown columns {sorted(unknown)} (known: {sorted(_CSV_COLUMNS)})')
    entries = []
    for i, row in enumerate(rows, start=2):
        where = f'{path}, line {i}'
        slide = Path(row['path'].strip()).expanduser()
        slide = slide if slide.is_absolute() else path.parent / slide
        slide_id = (row.get('slide_id') or '').strip() or slide.stem
        entries.append(
            SlideEntry(slide, slide_id, _positive_float(row.get('mpp'), where), row.get('label') or None)
        )
    return entries


def list_slides(source: str | os.PathLike, slide_mpp: float | None = None) -> list[SlideEntry]:
    """The slides of a folder (every file with a slide extension, recursively) or of a CSV list
    (columns ``path`` and optional ``slide_id``, ``mpp``, ``label``; paths relative to the CSV).

    ``slide_mpp`` is the MPP of every slide whose list line gives none. Slide ids must be unique
    (they name the output files).
    """
    source = Path(source).expanduser()
    if source.is_dir():
        files = sorted(p for p in source.rglob('*') if p.suffix.lower() in SLIDE_EXTENSIONS and p.is_file())
        entries = [SlideEntry(p, p.stem) for p in files if not p.name.startswith('.')]
    elif source.is_file() and source.suffix.lower() in ('.csv', '.tsv', '.txt'):
        entries = _read_csv(source)
    elif source.is_file():
        entries = [SlideEntry(source, source.stem)]
    else:
        raise InputNotFoundError(f'no such slide folder, slide list or slide: {source}')
    if slide_mpp is not None:
        entries = [
            e if e.mpp is not None else SlideEntry(e.path, e.slide_id, slide_mpp, e.label) for e in entries
        ]
    seen: dict[str, Path] = {}
    for e in entries:
        if e.slide_id in seen:
            raise InvalidOptionError(
                f'two slides share the id {e.slide_id!r}: {seen[e.slide_id]} and {e.path}; '
                'give each a slide_id in a CSV list'
            )
        seen[e.slide_id] = e.path
    return entries


class Slide:
    """An open slide with its level-0 scale. ``mpp`` overrides the metadata."""

    def __init__(self, path: str | os.PathLike, mpp: float | None = None, slide_id: str | None = None):
        self.path = Path(path)
        self.slide_id = slide_id or self.path.stem
        if not self.path.is_file():
            raise SlideError(f'{self.path}: no such slide file')
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideError, OSError) as e:
            raise SlideError(f'{self.path}: OpenSlide cannot open it ({type(e).__name__}: {e})') from e
        self.mpp = mpp if mpp is not None else self._metadata_mpp()
        self.dimensions: tuple[int, int] = self._slide.dimensions
        self.level_dimensions: tuple[tuple[int, int], ...] = self._slide.level_dimensions
        self.level_downsamples: tuple[float, ...] = self._slide.level_downsamples

    def _metadata_mpp(self) -> float:
        props = self._slide.properties
        values = [props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)]
        try:
            mpp = [float(v) for v in values if v]
        except ValueError:
            mpp = []
        if not mpp or not all(m > 0 for m in mpp):
            raise SlideError(
                f'{self.path}: the slide records no microns per pixel; give it in the slide list '
                '("mpp" column) or with --slide-mpp'
            )
        return float(np.mean(mpp))

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (reading there, then shrinking,
        never reads more pixels than needed and never upsamples)."""
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * (1 + 1e-6)]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    def read(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> Image.Image:
        """The region of ``size`` px at ``level`` whose top-left corner is (x0, y0) in level-0 px, as RGB
        (transparent parts, outside the scanned area, become white)."""
        try:
            rgba = self._slide.read_region((int(x0), int(y0)), level, (int(size[0]), int(size[1])))
        except openslide.OpenSlideError as e:
            raise SlideError(f'{self.path}: cannot read level {level} at ({x0}, {y0}): {e}') from e
        white = Image.new('RGB', rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel('A'))
        return white

    def thumbnail(self, mpp: float) -> tuple[np.ndarray, float]:
        """The whole slide at about ``mpp`` um/px, as an (H, W, 3) uint8 array, and its scale
        (level-0 px per thumbnail px)."""
        downsample = max(mpp / self.mpp, 1.0)
        w0, h0 = self.dimensions
        size = (max(1, round(w0 / downsample)), max(1, round(h0 / downsample)))
        level = self.best_level(downsample)
        lw, lh = self.level_dimensions[level]
        image = (
            self.read(0, 0, level, (lw, lh)).resize(size, Image.BILINEAR)
            if (lw, lh) != size
            else self.read(0, 0, level, (lw, lh))
        )
        return np.asarray(image), w0 / size[0]

    def close(self) -> None:
        self._slide.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
