"""The resumable extraction run: a source and an extractor in, one feature file out.

A rerun on the same output with the same provenance skips the images already done and appends
the rest; the file is rewritten atomically, also every ``save_every`` new images, so an
interrupted run resumes. Unreadable images are skipped (``on_error='skip'``, the default),
counted and listed under ``failed`` in the output's metadata, or stop the run
(``on_error='error'``) after saving progress.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import clean_leftovers
from ..errors import FeatureFileError, InvalidOptionError, UnreadableImageError
from .extractor import FeatureExtractor
from .sources import ImageSource, make_source
from .store import merge_rows, read_features, write_features

__all__ = ['extract_source', 'extract_features', 'RESUME_KEYS']

# provenance fields that must match for a rerun to append to an existing output
RESUME_KEYS = ('model', 'weights', 'preprocessing', 'layer', 'tta', 'precision')


class _ExtractionDataset(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, indices: list[int], transform):
        self.source, self.indices, self.transform = source, indices, transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: int):
        i = self.indices[j]
        try:
            return i, self.transform(self.source.open(i)), None
        except UnreadableImageError as e:
            return i, None, e.reason


def _collate(batch):
    good = [(i, x) for i, x, _ in batch if x is not None]
    errors = [(i, r) for i, _, r in batch if r is not None]
    idx = [i for i, _ in good]
    x = torch.stack([x for _, x in good]) if good else None
    return idx, x, errors


def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; extraction works without the eval extra
        return None
    return tqdm(total=total, unit='img', desc=desc, dynamic_ncols=True, file=sys.stderr)


def extract_source(
    extractor: FeatureExtractor,
    source: ImageSource,
    output: str | os.PathLike,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    on_error: str = 'skip',
    save_every: int = 20000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Extract the features of ``source`` into ``output`` with ``extractor``; returns run stats."""
    if on_error not in ('skip', 'error'):
        raise InvalidOptionError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    output = Path(output)
    clean_leftovers(output.parent)  # partial files of killed runs
    prov = extractor.provenance()
    rows: dict[str, tuple[np.ndarray, str | None]] = {}
    old_failed: dict[str, str] = {}
    runs: list[dict] = []
    if output.exists() and not overwrite:
        old = read_features(output)
        diff = [k for k in RESUME_KEYS if old.provenance.get(k) != prov.get(k)]
        if diff:
            raise FeatureFileError(
                f'{output} holds features from a different extraction ({", ".join(diff)} differ); '
                'pass overwrite=True (--overwrite) or choose another output'
            )
        for k, f, name in zip(old.paths, old.features, old.label_names()):
            rows[k] = (f, name)
        old_failed, runs = old.failed, list(old.meta.get('runs', []))
    todo = [i for i, k in enumerate(source.keys) if k not in rows]
    failed: dict[str, str] = {
        k: r for k, r in old_failed.items() if k not in set(source.keys) and k not in rows
    }
    n_skipped = len(source.keys) - len(todo)

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        _ExtractionDataset(source, todo, extractor.transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=extractor.device.type == 'cuda',
        persistent_workers=False,
        prefetch_factor=4 if num_workers > 0 else None,
    )

    started = datetime.now(timezone.utc).isoformat(timespec='seconds')
    stats = {'n_input': len(source.keys), 'n_skipped_done': n_skipped, 'n_new': 0, 'n_failed': 0}

    def save() -> None:
        run = dict(
            started=started,
            n_new=stats['n_new'],
            n_failed=stats['n_failed'],
            img_per_s=stats.get('img_per_s'),
        )
        meta = {
            'provenance': prov,
            'source': source.description,
            'failed': failed,
            'n_failed': len(failed),
            'runs': runs + [run],
        }
        write_features(output, merge_rows(source.keys, rows, meta))

    bar = _progress(len(todo), progress, f'extract {extractor.spec}')
    t0, since_save = time.perf_counter(), 0
    try:
        for idx, x, errors in loader:
            for i, reason in errors:
                key = source.keys[i]
                failed[key] = reason
                stats['n_failed'] += 1
                if on_error == 'error':
                    save()
                    raise UnreadableImageError(key, reason)
                print(f'skipping unreadable image {key}: {reason}', file=sys.stderr)
            if x is not None:
                feats = extractor(x).numpy()
                for i, f in zip(idx, feats):
                    rows[source.keys[i]] = (f, source.label_names[i])
                    failed.pop(source.keys[i], None)
                stats['n_new'] += len(idx)
                since_save += len(idx)
            if bar is not None:
                bar.update(len(idx) + len(errors))
            if since_save >= save_every:
                save()
                since_save = 0
    finally:
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    stats['seconds'] = round(elapsed, 3)
    stats['img_per_s'] = round(stats['n_new'] / elapsed, 2) if elapsed > 0 and stats['n_new'] else None
    save()
    stats.update(n_rows=len(rows), failed=dict(failed), output=str(output))
    return stats


def extract_features(
    model: str,
    input: Any,
    output: str | os.PathLike,
    *,
    seed: int = 0,
    layer: str = 'pooled',
    tta: str = 'none',
    img_size: int | None = None,
    device: str | None = 'auto',
    precision: str = 'auto',
    channels_last: bool | None = None,
    labels: bool = True,
    split: str | None = None,
    image_column: str = 'image',
    label_column: str | None = 'label',
    source_mpp: float | None = None,
    mpp: float | None = None,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Load ``model`` (a spec string), read ``input`` and write features to ``output``.

    ``source_mpp`` / ``mpp``: the images' microns per pixel and the scale wanted (see
    :class:`~mtdp_hub.features.extractor.FeatureExtractor`).

    ``run_kwargs`` go to :func:`extract_source` (batch_size, num_workers, on_error, save_every,
    overwrite, progress). Returns the run stats (counts, img/s, failed files).
    """
    source = make_source(
        input, labels=labels, split=split, image_column=image_column, label_column=label_column
    )
    extractor = FeatureExtractor(
        model,
        seed=seed,
        layer=layer,
        tta=tta,
        img_size=img_size,
        device=device,
        precision=precision,
        channels_last=channels_last,
        source_mpp=source_mpp,
        mpp=mpp,
    )
    return extract_source(extractor, source, output, **run_kwargs)
