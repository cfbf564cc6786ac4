"""Slides to feature files: tissue -> tiles -> batched features, one file per slide, resumable, sharded.

``run_slides`` is what ``mtdp slides`` and ``torchrun -m mtdp_hub.slides`` run. For each slide of
this rank's share (slide ``i`` goes to rank ``i % world_size``): skip it when its feature file
exists with the same settings; take its lock file (``.<slide_id>.lock``, so that several jobs can
share one output folder); segment the tissue on a thumbnail; read the kept tiles in DataLoader
workers (each worker opens the slide once) as uint8 pixels; run the extractor in batches (normalised
on the device, several batches in flight: :mod:`..pipeline`); write the feature file
and the quality-control pictures atomically. A slide that cannot be read is reported and the
others go on. Each rank writes its part of the report; the first rank merges them into
``report.json`` and ``report.csv`` (one row per slide: tiles, tissue area, seconds, status, error).
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ..._io import atomic_write_text, clean_leftovers, try_lock
from ...errors import FeatureFileError, MtdpError
from ..extractor import FeatureExtractor
from ..pipeline import loader_settings, stream_features
from .qc import write_qc
from .reader import Slide, SlideEntry, SlideError, list_slides
from .store import SlideFeatures, feature_path, read_slide_features, write_slide_features
from .tiling import TileGrid, TileSpec, tile_grid
from .tissue import TissueSettings, segment_tissue, tissue_fraction

__all__ = ['SlideSettings', 'iterate_tiles', 'extract_slide', 'run_slides', 'REPORT_COLUMNS']

REPORT_COLUMNS = ('slide_id', 'path', 'status', 'tiles', 'tissue_mm2', 'seconds', 'rank', 'error')
_RESUME_KEYS = ('model', 'weights', 'preprocessing', 'layer', 'tta', 'tiles', 'tissue')


@dataclass(frozen=True)
class SlideSettings:
    """Everything but the model that decides a slide's features."""

    tiles: TileSpec = field(default_factory=TileSpec)
    tissue: TissueSettings = field(default_factory=TissueSettings)
    fmt: str = 'h5'
    qc: bool = True


class _TileDataset(Dataset):
    """The kept tiles of one slide, read and resized to ``tile`` px, through ``transform`` (the
    extractor's ``pixel_transform``: uint8 CHW tensors)."""

    def __init__(self, path: Path, mpp: float, grid: TileGrid, transform):
        self.path, self.mpp, self.grid, self.transform = path, mpp, grid, transform
        self._slide: Slide | None = None  # opened once per worker process

    def __len__(self) -> int:
        return len(self.grid)

    def tile(self, i: int) -> Image.Image:
        if self._slide is None:
            self._slide = Slide(self.path, self.mpp)
        g = self.grid
        x, y = g.coords[i]
        im = self._slide.read(x, y, g.level, (g.read_size, g.read_size))
        return im if g.read_size == g.spec.tile else im.resize((g.spec.tile, g.spec.tile), Image.BILINEAR)

    def __getitem__(self, i: int):
        return self.transform(self.tile(i))


def _segment(slide: Slide, settings: SlideSettings) -> tuple[np.ndarray, np.ndarray, float, TileGrid]:
    thumb, scale = slide.thumbnail(settings.tissue.seg_mpp)
    mask = segment_tissue(thumb, slide.mpp * scale, settings.tissue)
    grid = tile_grid(slide, settings.tiles, lambda x0, y0, size0: tissue_fraction(mask, scale, x0, y0, size0))
    return thumb, mask, scale, grid


def iterate_tiles(
    slide: Slide, settings: SlideSettings = SlideSettings()
) -> Iterator[tuple[tuple[int, int], Image.Image]]:
    """``((x, y) at level 0, RGB tile of settings.tiles.tile px)`` for every kept tile of ``slide``."""
    _, _, _, grid = _segment(slide, settings)
    ds = _TileDataset(slide.path, slide.mpp, grid, transform=None)
    for i in range(len(grid)):
        yield (int(grid.coords[i, 0]), int(grid.coords[i, 1])), ds.tile(i)


def _features(
    extractor: FeatureExtractor, ds: _TileDataset, batch_size: int | None, num_workers: int | None
) -> np.ndarray:
    if len(ds) == 0:  # no tissue: an empty (0, D) matrix of the right width
        size = extractor.data_config['input_size'][1:]
        return np.zeros((0, extractor(torch.zeros(1, 3, *size, dtype=torch.uint8)).shape[1]), np.float32)
    loader = DataLoader(ds, shuffle=False, **loader_settings(extractor.device, num_workers, batch_size))
    feats = np.concatenate([f for _, f in stream_features(extractor, ((None, x) for x in loader))])
    if not np.isfinite(feats).all():
        raise SlideError(
            f'{ds.path}: the model gave non-finite features for '
            f'{int((~np.isfinite(feats)).any(1).sum())} tile(s); nothing was written'
        )
    return feats


def _provenance(
    extractor: FeatureExtractor, slide: Slide, entry: SlideEntry, settings: SlideSettings
) -> dict:
    prov = extractor.provenance()
    prov['versions'].update(openslide=openslide.__library_version__, openslide_python=openslide.__version__)
    return {
        **prov,
        'tiles': settings.tiles.to_dict(),
        'tissue': settings.tissue.to_dict(),
        'slide': {
            'path': str(slide.path),
            'slide_id': slide.slide_id,
            'mpp': slide.mpp,
            'mpp_source': 'metadata' if entry.mpp is None else 'given',
            'label': entry.label,
            'dimensions': list(slide.dimensions),
            'levels': len(slide.level_dimensions),
        },
    }


def extract_slide(
    extractor: FeatureExtractor,
    entry: SlideEntry,
    out_dir: str | os.PathLike,
    settings: SlideSettings = SlideSettings(),
    *,
    batch_size: int | None = None,
    num_workers: int | None = 0,
) -> dict[str, Any]:
    """Features of one slide into ``out_dir/<slide_id>.<fmt>`` (+ ``qc/`` pictures); returns its report row.

    ``num_workers``: DataLoader workers reading the tiles (``None``: :func:`..runtime.loader_workers`'s
    default for the extractor's device)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with Slide(entry.path, entry.mpp, entry.slide_id) as slide:
        thumb, mask, scale, grid = _segment(slide, settings)
        ds = _TileDataset(slide.path, slide.mpp, grid, extractor.pixel_transform)
        feats = _features(extractor, ds, batch_size, num_workers)
        meta = _provenance(extractor, slide, entry, settings)
        tissue_mm2 = float(mask.sum()) * (slide.mpp * scale) ** 2 / 1e6
        meta['tissue_mm2'] = tissue_mm2
        write_slide_features(
            feature_path(out_dir, entry.slide_id, settings.fmt),
            SlideFeatures(feats, grid.coords, grid.attrs(), meta),
        )
        if settings.qc:
            write_qc(
                out_dir / 'qc' / f'{entry.slide_id}.png',
                out_dir / 'qc' / f'{entry.slide_id}.geojson',
                thumb,
                mask,
                grid.coords[:, 0],
                grid.coords[:, 1],
                grid.size0,
                scale,
                entry.slide_id,
            )
    return {
        'slide_id': entry.slide_id,
        'path': str(entry.path),
        'status': 'done',
        'tiles': len(grid),
        'tissue_mm2': round(tissue_mm2, 4),
        'seconds': round(time.perf_counter() - t0, 3),
        'error': '',
    }


# --- several jobs, several ranks --------------------------------------------------------------------
def _lock(out_dir: Path, slide_id: str) -> Path | None:
    """Take ``.<slide_id>.lock`` in ``out_dir``; ``None`` when a live job holds it (see :func:`try_lock`)."""
    return try_lock(out_dir / f'.{slide_id}.lock')[0]


def _done(path: Path, extractor: FeatureExtractor, settings: SlideSettings) -> tuple[str | None, int]:
    """``(None, tiles)`` when ``path`` holds this slide's features with these settings; else ``(why not, 0)``."""
    try:
        sf = read_slide_features(path)
    except MtdpError as e:
        return str(e), 0
    old = sf.meta
    want = {**extractor.provenance(), 'tiles': settings.tiles.to_dict(), 'tissue': settings.tissue.to_dict()}
    differ = [
        k
        for k in _RESUME_KEYS
        if json.dumps(old.get(k), sort_keys=True, default=str)
        != json.dumps(want.get(k), sort_keys=True, default=str)
    ]
    if differ:
        return f'{path} holds features made with other settings ({", ".join(differ)})', 0
    return None, len(sf.coords)


def _one(extractor, entry, out_dir, settings, overwrite, rank, **run_kwargs) -> dict[str, Any]:
    row = {
        'slide_id': entry.slide_id,
        'path': str(entry.path),
        'tiles': '',
        'tissue_mm2': '',
        'seconds': '',
        'rank': rank,
        'error': '',
    }
    path = feature_path(out_dir, entry.slide_id, settings.fmt)
    if path.exists() and not overwrite:
        why, tiles = _done(path, extractor, settings)
        if why is None:
            return {**row, 'status': 'skipped (done)', 'tiles': tiles}
        return {**row, 'status': 'error', 'error': f'{why}; use --overwrite or another --out'}
    lock = _lock(out_dir, entry.slide_id)
    if lock is None:
        return {**row, 'status': 'skipped (locked by another job)'}
    try:
        return {**extract_slide(extractor, entry, out_dir, settings, **run_kwargs), 'rank': rank}
    except (MtdpError, OSError, openslide.OpenSlideError) as e:  # a bad slide: report it, go on
        return {**row, 'status': 'error', 'error': f'{type(e).__name__}: {e}'}
    finally:
        lock.unlink(missing_ok=True)


def _write_report(out_dir: Path, rows: Sequence[dict], name: str = 'report') -> None:
    rows = sorted(rows, key=lambda r: str(r['slide_id']))
    atomic_write_text(out_dir / f'{name}.json', json.dumps({'slides': rows}, indent=1, default=str) + '\n')
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=REPORT_COLUMNS, extrasaction='ignore')
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / f'{name}.csv', buffer.getvalue())


def _merge_report(out_dir: Path, rows: Sequence[dict]) -> list[dict]:
    """Fold ``rows`` into ``report.json`` (rows of earlier runs and other jobs are kept), under a lock."""
    lock = None
    for _ in range(600):  # other jobs hold it for milliseconds
        lock = _lock(out_dir, 'report')
        if lock is not None:
            break
        time.sleep(0.05)
    try:
        merged: dict[str, dict] = {}
        if (out_dir / 'report.json').exists():
            merged = {r['slide_id']: r for r in json.loads((out_dir / 'report.json').read_text())['slides']}
        for r in rows:
            if not r['status'].startswith('skipped (locked') or r['slide_id'] not in merged:
                merged[r['slide_id']] = r
        _write_report(out_dir, list(merged.values()))
        return list(merged.values())
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return (
        int(os.environ.get('RANK', 0)),
        int(os.environ.get('WORLD_SIZE', 1)),
        int(os.environ.get('LOCAL_RANK', 0)),
    )


def run_slides(
    model: str,
    slides: str | os.PathLike,
    out: str | os.PathLike,
    settings: SlideSettings = SlideSettings(),
    *,
    slide_mpp: float | None = None,
    extractor_kwargs: dict | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    overwrite: bool = False,
    log=print,
) -> list[dict[str, Any]]:
    """Extract every slide of ``slides`` (a folder or CSV list) into ``out``; returns the report rows.

    Under ``torchrun`` each rank takes every ``world_size``-th slide and its own GPU
    (``cuda:LOCAL_RANK``), and the first rank merges the report once every rank is done.
    """
    rank, world, local = _rank()
    distributed = world > 1
    if distributed and not torch.distributed.is_initialized():
        torch.distributed.init_process_group('gloo')  # only for the final barrier: any device
    kwargs = dict(extractor_kwargs or {})
    if kwargs.get('device', 'auto') in (None, 'auto') and torch.cuda.is_available():
        kwargs['device'] = f'cuda:{local}'
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FeatureFileError(
            f'--out {out} is a file; give a folder (it receives <slide_id>.{settings.fmt} files)'
        )
    entries = list_slides(slides, slide_mpp)
    extractor = FeatureExtractor(model, **kwargs)
    (out / 'qc').mkdir(parents=True, exist_ok=True)
    clean_leftovers(out), clean_leftovers(out / 'qc')
    workers = num_workers  # None: runtime.loader_workers (this rank's share of the CPUs)
    mine = entries[rank::world]
    rows = []
    for i, entry in enumerate(mine, start=1):
        row = _one(
            extractor, entry, out, settings, overwrite, rank, batch_size=batch_size, num_workers=workers
        )
        rows.append(row)
        log(
            f'[rank {rank}] {i}/{len(mine)} {entry.slide_id}: {row["status"]}'
            + (f', {row["tiles"]} tiles, {row["seconds"]} s' if row['status'] == 'done' else '')
            + (f' ({row["error"]})' if row['error'] else '')
        )
    if not distributed:
        return _merge_report(out, rows)
    atomic_write_text(out / f'.report.rank{rank}.json', json.dumps(rows, default=str))
    torch.distributed.barrier()
    merged = rows
    if rank == 0:
        parts = [out / f'.report.rank{r}.json' for r in range(world)]
        merged = _merge_report(out, [row for p in parts for row in json.loads(p.read_text())])
        for p in parts:
            p.unlink(missing_ok=True)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return merged
