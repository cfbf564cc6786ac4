"""The resumable extraction run: a source and an extractor in, one feature file out.

A rerun on the same output with the same provenance skips the images already done and appends
the rest; the file is rewritten atomically, also every ``save_every`` new images (on a
background thread, while extraction goes on), so an interrupted run resumes. Unreadable images
are skipped (``on_error='skip'``, the default), counted and listed under ``failed`` in the
output's metadata, or stop the run (``on_error='error'``, naming the image) after saving progress. No file is written before the
first feature: a run that fails before any (or in which no image can be read) leaves nothing.

The data path (uint8 from the workers, normalised on the device, several batches in flight, no
host sync per batch) is :mod:`.pipeline`'s; the rows are written a few batches behind the device.

Safety: the output is checked before any work (suffix ``.safetensors``/``.parquet``, not a
folder, its folder writable, an existing file readable as a features file unless
``overwrite``); it is locked for the run (``.{name}.lock`` beside it, pid and host inside; a lock
of a dead process on this host is taken over), so two runs never write it at once. A resumed
output must come from the same source (:attr:`ImageSource.origin`, recorded as ``source_origin``)
and each row records its file's ``size:mtime_ns`` (``fingerprints``): a file changed since is
extracted again. A batch with NaN/Inf features stops the run (:class:`NonFiniteFeaturesError`,
progress saved, those rows not written); a failed write raises :class:`FeatureFileError`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError

from .._io import clean_leftovers, try_lock
from ..errors import FeatureFileError, InputNotFoundError, InvalidOptionError, UnreadableImageError
from .extractor import FeatureExtractor
from .pipeline import loader_settings, stream_features
from .sources import ImageSource, make_source
from .store import merge_rows, read_features, read_meta, write_features

__all__ = [
    'extract_source',
    'extract_features',
    'check_output',
    'NonFiniteFeaturesError',
    'RESUME_KEYS',
    'OUTPUT_SUFFIXES',
]

OUTPUT_SUFFIXES = ('.safetensors', '.parquet')

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
    """A tqdm bar on a terminal only (``disable=None``): a captured log gets no carriage returns."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; extraction works without the eval extra
        return None
    return tqdm(total=total, unit='img', desc=desc, dynamic_ncols=True, file=sys.stderr, disable=None)


def _summary(spec: str, stats: dict, output: Path) -> str:
    rate = f', {stats["img_per_s"]} img/s' if stats.get('img_per_s') else ''
    return (
        f'extract {spec}: {stats["n_new"]} new, {stats["n_skipped_done"]} already done, '
        f'{stats["n_failed"]} unreadable, {stats["seconds"]} s{rate} -> {output}'
    )


class NonFiniteFeaturesError(FeatureFileError):
    """The model gave NaN/Inf features; the message names the images (their rows are not written)."""


def check_output(output: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse an output that cannot be written or resumed, before any work; returns it as a Path.

    Raises :class:`InvalidOptionError` for a suffix other than :data:`OUTPUT_SUFFIXES`, and
    :class:`FeatureFileError` naming the path for a folder, a folder that cannot be written, or an
    existing file that is not a readable features file (unless ``overwrite``).
    """
    output = Path(output)
    if output.suffix not in OUTPUT_SUFFIXES:
        raise InvalidOptionError(
            f'output {output}: the suffix must be .safetensors or .parquet, not {output.suffix or "none"!r}'
        )
    if output.is_dir():
        raise FeatureFileError(f'output {output} is a folder; give a .safetensors/.parquet file name')
    folder = output.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first existing folder above: the run creates the rest
    if not folder.is_dir():
        raise FeatureFileError(f'output {output}: {folder} is not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise FeatureFileError(f'output {output}: the folder {folder} is not writable')
    if output.exists() and not overwrite:
        try:
            read_meta(output)
        except FeatureFileError as e:
            raise FeatureFileError(
                f'{e}; pass overwrite=True (--overwrite) to replace it, or choose another output'
            ) from e
    return output


@contextlib.contextmanager
def _locked(output: Path) -> Iterator[Path]:
    """Hold ``.{output}.lock`` (O_EXCL, pid and host inside) for the block; a stale lock is taken over."""
    path, holder = try_lock(output.with_name(f'.{output.name}.lock'))
    if path is None:
        raise FeatureFileError(
            f'{output} is being written by another extraction ({holder}, lock '
            f'{output.with_name(f".{output.name}.lock")}); wait for it, or remove the lock if that run is gone'
        )
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _resume(output: Path, prov: dict, source: ImageSource, fingerprints: dict[str, str | None]):
    """Rows, failures, runs and file fingerprints of an existing ``output`` that this run may extend."""
    old = read_features(output)
    diff = [k for k in RESUME_KEYS if old.provenance.get(k) != prov.get(k)]
    if diff:
        raise FeatureFileError(
            f'{output} holds features from a different extraction ({", ".join(diff)} differ); '
            'pass overwrite=True (--overwrite) or choose another output'
        )
    origin = old.meta.get('source_origin')
    if origin is not None and origin != source.origin:
        raise FeatureFileError(
            f'{output} holds features of {origin} ({old.meta.get("source")}), not of {source.origin} '
            f'({source.description}); pass overwrite=True (--overwrite) or choose another output'
        )
    old_fps = dict(old.meta.get('fingerprints', {}))
    rows = {}
    for k, f, name in zip(old.paths, old.features, old.label_names()):
        now, then = fingerprints.get(k), old_fps.get(k)
        if now is not None and then is not None and now != then:
            old_fps.pop(k)  # the file changed since: extract it again
            continue
        rows[k] = (f, name)
    return rows, old.failed, list(old.meta.get('runs', [])), old_fps


def _batches(
    source: ImageSource, todo: list[int], extractor, batch_size: int | None, num_workers: int | None
):
    """``((indices, errors), uint8 batch or None)`` from DataLoader workers, for :func:`stream_features`."""
    loader = torch.utils.data.DataLoader(
        _ExtractionDataset(source, todo, extractor.pixel_transform),
        shuffle=False,
        collate_fn=_collate,
        **loader_settings(extractor.device, num_workers, batch_size),
    )
    for idx, x, errors in loader:
        yield (idx, errors), x


def _finite_or_raise(output: Path, feats: np.ndarray, keys: list[str], save) -> None:
    bad = ~np.isfinite(feats).all(axis=1)
    if bad.any():
        save()
        names = [k for k, b in zip(keys, bad) if b]
        shown = ', '.join(names[:10]) + (f' and {len(names) - 10} more' if len(names) > 10 else '')
        raise NonFiniteFeaturesError(
            f'{output}: the model gave non-finite features (NaN/Inf) for {len(names)} image(s): {shown}; '
            'nothing was written for them (progress saved); check the weights or use --precision float32'
        )


def extract_source(
    extractor: FeatureExtractor,
    source: ImageSource,
    output: str | os.PathLike,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    on_error: str = 'skip',
    save_every: int = 20000,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Extract the features of ``source`` into ``output`` with ``extractor``; returns run stats.

    ``batch_size`` / ``num_workers``: ``None`` for the defaults of the extractor's device
    (:func:`~mtdp_hub.features.pipeline.loader_settings`: 256 images and every CPU but one, at most
    16, on CUDA; 64 and half the CPUs, at most 8, on the CPU; workers never exceed the CPUs available).
    """
    if on_error not in ('skip', 'error'):
        raise InvalidOptionError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    output = check_output(output, overwrite)
    with _locked(output):
        clean_leftovers(output.parent)  # partial files of killed runs
        return _run(
            extractor, source, output, batch_size, num_workers, on_error, save_every, overwrite, progress
        )


def _run(extractor, source, output, batch_size, num_workers, on_error, save_every, overwrite, progress):
    prov = extractor.provenance()
    fps = {k: source.fingerprint(i) for i, k in enumerate(source.keys)}
    rows: dict[str, tuple[np.ndarray, str | None]] = {}
    old_failed, runs, old_fps = {}, [], {}
    if output.exists() and not overwrite:
        rows, old_failed, runs, old_fps = _resume(output, prov, source, fps)
    todo = [i for i, k in enumerate(source.keys) if k not in rows]
    failed: dict[str, str] = {k: r for k, r in old_failed.items() if k not in fps and k not in rows}
    started = datetime.now(timezone.utc).isoformat(timespec='seconds')
    stats = {'n_input': len(source.keys), 'n_skipped_done': len(source.keys) - len(todo), 'n_new': 0}
    stats['n_failed'] = 0

    def write(rows: dict, failed: dict, counts: dict) -> None:
        if not rows:  # nothing extracted yet: no file (an existing output is left as it is)
            return
        run = dict(started=started, n_new=counts['n_new'], n_failed=counts['n_failed'])
        run['img_per_s'] = counts.get('img_per_s')
        done = {k: v for k, v in {**old_fps, **fps}.items() if k in rows and v is not None}
        meta = {
            'provenance': prov,
            'source': source.description,
            'source_origin': source.origin,
            'fingerprints': done,
            'failed': failed,
            'n_failed': len(failed),
            'runs': runs + [run],
        }
        try:
            write_features(output, merge_rows(source.keys, rows, meta))
        except (OSError, SafetensorError) as e:
            raise FeatureFileError(
                f'cannot write {output}: {getattr(e, "strerror", None) or e} (progress saved before is kept)'
            ) from e

    saver = _Saver(write)

    def save() -> None:  # now, in this thread, after any background save
        saver.now(dict(rows), dict(failed), dict(stats))

    bar = _progress(len(todo), progress, f'extract {extractor.spec}')
    t0, since_save = time.perf_counter(), 0
    try:
        batches = _batches(source, todo, extractor, batch_size, num_workers)
        for (idx, errors), feats in stream_features(extractor, batches):
            if feats is not None:
                _finite_or_raise(output, feats, [source.keys[i] for i in idx], save)
                for i, f in zip(idx, feats):
                    rows[source.keys[i]] = (f, source.label_names[i])
                    failed.pop(source.keys[i], None)
                stats['n_new'] += len(idx)
                since_save += len(idx)
            for i, reason in errors:
                _unreadable(source.keys[i], reason, failed, stats, on_error, save)
            if bar is not None:
                bar.update(len(idx) + len(errors))
            if since_save >= save_every and not saver.busy():
                saver.background(dict(rows), dict(failed), dict(stats))
                since_save = 0
    finally:
        saver.join()  # a background save in progress completes before the lock is released
        if bar is not None:
            bar.close()
    elapsed = time.perf_counter() - t0
    stats['seconds'] = round(elapsed, 3)
    stats['img_per_s'] = round(stats['n_new'] / elapsed, 2) if elapsed > 0 and stats['n_new'] else None
    if not rows:
        shown = '; '.join(f'{k}: {r}' for k, r in list(failed.items())[:3])
        raise FeatureFileError(
            f'{output}: none of the {len(todo)} image(s) of {source.description} could be read '
            f'({shown}{"; ..." if len(failed) > 3 else ""}); nothing was written'
        )
    save()
    if progress:
        print(_summary(extractor.spec, stats, output), file=sys.stderr)
    stats.update(n_rows=len(rows), failed=dict(failed), output=str(output))
    return stats


class _Saver:
    """Writes snapshots of the rows, one write at a time.

    Periodic saves run on a background thread (:meth:`background`): every one rewrites the whole
    file atomically, and on a fast device the pipeline keeps running meanwhile instead of waiting
    for the disk. The last save and those before an error run in the caller's thread (:meth:`now`),
    after the background one; an error of a background save is raised by the next call.
    """

    def __init__(self, write):
        self._write, self._thread, self._error = write, None, None

    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _target(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as e:  # raised in the main thread by the next call
            self._error = e

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def wait(self) -> None:
        self.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def background(self, *args) -> None:
        self.wait()
        self._thread = threading.Thread(target=self._target, args=args, name='mtdp-extract-save', daemon=True)
        self._thread.start()

    def now(self, *args) -> None:
        self.wait()
        self._write(*args)


def _unreadable(key: str, reason: str, failed: dict, stats: dict, on_error: str, save) -> None:
    """Record an unreadable image; with ``on_error='error'`` save what is done and raise, naming it."""
    failed[key] = reason
    stats['n_failed'] += 1
    if on_error == 'error':
        error = UnreadableImageError(key, reason)
        try:
            save()
        except FeatureFileError as e:
            raise error from e
        raise error
    print(f'skipping unreadable image {key}: {reason}', file=sys.stderr)


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
    weights: str | os.PathLike | None = None,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Load ``model`` (a spec string), read ``input`` and write features to ``output``.

    ``source_mpp`` / ``mpp``: the images' microns per pixel and the scale wanted; ``weights``: a
    local weight file instead of the model's registered sources (see
    :class:`~mtdp_hub.features.extractor.FeatureExtractor`).

    ``run_kwargs`` go to :func:`extract_source` (batch_size, num_workers, on_error, save_every,
    overwrite, progress). Returns the run stats (counts, img/s, failed files).
    """
    output = check_output(output, run_kwargs.get('overwrite', False))  # before loading anything
    if weights is not None and not Path(weights).expanduser().is_file():
        raise InputNotFoundError(f'{model}: no such weight file {weights}')
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
        weights=weights,
    )
    return extract_source(extractor, source, output, **run_kwargs)
