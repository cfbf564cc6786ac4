"""Batch feature extraction: images in, one feature row per image out (safetensors or Parquet).

Inputs: a folder (recursive; the parent folder name is the label), a file list (``.txt``/``.csv``,
one ``path`` or ``path,label`` per line, relative to the list's folder), or a ``datasets`` source
(``datasets:NAME_OR_SAVED_DIR`` with ``split``/``image_column``/``label_column``).

Outputs record their provenance (model spec, architecture and tag, weight SHA-256 or Hub revision,
preprocessing, layer, TTA, precision, package versions). A rerun on the same output with the same
provenance skips the images already done and appends the rest; files are written atomically
(temporary file + rename), also every ``save_every`` new images, so an interrupted run resumes.
safetensors keeps the paths in its JSON header (limit 100 MB): use ``.parquet`` beyond ~1M images.
Unreadable images are skipped (``on_error='skip'``, the default), counted and listed under
``failed`` in the output's metadata, or stop the run (``on_error='error'``) after saving progress.

Python use::

    from mtdp_hub.extract import extract_features, read_features
    stats = extract_features('mtdp_resnet50', 'patches/', 'feats.safetensors')
    feats = read_features('feats.safetensors')   # .paths, .features (N, D), .labels, .meta
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtdp_hub.images import UnreadableImageError, find_images, open_rgb, to_rgb
from mtdp_hub.transfer.backbones import (
    autocast_dtype,
    data_config,
    eval_transform,
    load_backbone,
    model_identity,
    package_versions,
    pick_device,
    weights_provenance,
)

__all__ = ['FeatureExtractor', 'FeatureFile', 'ImageSource', 'extract_features', 'extract_source',
           'read_features', 'make_source', 'add_cli']

FORMAT = 'mtdp-features/1'
TTA_VIEWS = {'none': 1, 'flip3': 3, 'flip4': 4}
# provenance fields that must match for a rerun to append to an existing output
_RESUME_KEYS = ('model', 'weights', 'preprocessing', 'layer', 'tta', 'precision')
_EVAL_EXTRA = 'pip install mtdp-hub[eval]'


# ----------------------------------------------------------------------------------------------
# sources
@dataclass
class ImageSource:
    """Images to extract: ``keys`` (stored as ``path``), optional label names, and how to open one."""

    keys: list[str]
    label_names: list[str | None]
    description: str
    root: Path | None = None          # keys are relative to it (folder / file list)
    dataset: Any = None               # a datasets.Dataset (keys are row indices)
    image_column: str = 'image'

    def open(self, i: int):
        if self.dataset is None:
            path = Path(self.keys[i])
            return open_rgb(path if self.root is None or path.is_absolute() else self.root / path)
        try:
            im = self.dataset[i][self.image_column]
            return to_rgb(im)
        except Exception as e:  # decoding happens inside datasets; report like a file
            raise UnreadableImageError(self.keys[i], f'{type(e).__name__}: {e}') from e


def _folder_source(root: Path, labels: bool) -> ImageSource:
    paths = find_images(root)
    keys = [p.relative_to(root).as_posix() for p in paths]
    names = [(p.parent.name if labels and p.parent != root else None) for p in paths]
    return ImageSource(keys, names, f'folder {root}', root=root)


def _list_source(list_file: Path, labels: bool) -> ImageSource:
    keys, names = [], []
    for line in list_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        sep = '\t' if '\t' in line else ','
        path, _, label = line.partition(sep)
        if path.strip().lower() in ('path', 'file', 'filename') and not keys:
            continue  # a CSV header
        keys.append(path.strip())
        names.append(label.strip() or None if labels else None)
    return ImageSource(keys, names, f'file list {list_file}', root=list_file.parent)


def _datasets_source(name: str, split: str | None, image_column: str, label_column: str | None,
                     labels: bool) -> ImageSource:
    try:
        import datasets
    except ImportError as e:
        raise ImportError(f'a datasets source needs the datasets package: {_EVAL_EXTRA}') from e
    if Path(name).exists():
        ds = datasets.load_from_disk(name)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split or 'train']
    else:
        ds = datasets.load_dataset(name, split=split or 'train')
    names: list[str | None] = [None] * len(ds)
    if labels and label_column and label_column in ds.column_names:
        feat = ds.features[label_column]
        raw = ds[label_column]
        class_names = getattr(feat, 'names', None)
        names = [(class_names[v] if class_names is not None else str(v)) for v in raw]
    split_name = split or 'train'
    keys = [f'{split_name}/{i}' for i in range(len(ds))]
    return ImageSource(keys, names, f'datasets {name} [{split_name}]', dataset=ds, image_column=image_column)


def make_source(input: str | os.PathLike | Sequence[str | os.PathLike], *, labels: bool = True,
                split: str | None = None, image_column: str = 'image',
                label_column: str | None = 'label') -> ImageSource:
    """An :class:`ImageSource` from a folder, a file list, a ``datasets:`` source or a list of paths."""
    if isinstance(input, (list, tuple)):
        keys = [str(p) for p in input]
        names = [(Path(k).parent.name if labels else None) for k in keys]
        return ImageSource(keys, names, f'{len(keys)} paths')
    text = str(input)
    if text.startswith('datasets:'):
        return _datasets_source(text[len('datasets:'):], split, image_column, label_column, labels)
    path = Path(text)
    if path.is_dir():
        return _folder_source(path, labels)
    if path.is_file() and path.suffix.lower() in ('.txt', '.csv', '.lst', '.tsv'):
        return _list_source(path, labels)
    if path.is_file():
        return ImageSource([path.name], [None], f'file {path}', root=path.parent)
    raise FileNotFoundError(f'no such input: {path} (a folder, a .txt/.csv file list or datasets:NAME)')


# ----------------------------------------------------------------------------------------------
# model side
class FeatureExtractor:
    """A backbone with its preprocessing, the chosen layer, TTA flips, device and precision.

    layer: ``'pooled'`` (the model's pooled final features), ``'trunc'`` (the stage before the last,
    average pooled: layer3 of a ResNet50 -> 1024-d, as CLAM), or a stage index into ``feature_info``.
    tta: ``'none'``, ``'flip3'`` (identity, h-flip, v-flip) or ``'flip4'`` (+ both), averaged.
    """

    def __init__(self, spec: str, *, seed: int = 0, layer: str = 'pooled', tta: str = 'none',
                 img_size: int | None = None, device: str | None = 'auto', precision: str = 'auto',
                 channels_last: bool | None = None, model: torch.nn.Module | None = None):
        if tta not in TTA_VIEWS:
            raise ValueError(f'tta must be one of {sorted(TTA_VIEWS)}, not {tta!r}')
        self.spec, self.seed, self.layer, self.tta = spec, seed, str(layer), tta
        self.device = pick_device(device)
        self.amp_dtype = autocast_dtype(precision, self.device)
        self.model = (model if model is not None else load_backbone(spec, seed=seed)).eval().to(self.device)
        self.channels_last = self.device.type == 'cuda' if channels_last is None else channels_last
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.stage = self._stage_index()
        self.data_config = data_config(self.model, img_size)
        self.transform = eval_transform(self.data_config)

    def _stage_index(self) -> int | None:
        if self.layer == 'pooled':
            return None
        n = len(getattr(self.model, 'feature_info', []) or [])
        if not hasattr(self.model, 'forward_intermediates') or n == 0:
            raise ValueError(f'{self.spec} does not expose intermediate stages (layer={self.layer!r})')
        if self.layer == 'trunc':
            return n - 2
        try:
            idx = int(self.layer)
        except ValueError:
            raise ValueError(f"layer must be 'pooled', 'trunc' or a stage index, not {self.layer!r}") from None
        if not -n <= idx < n:
            raise ValueError(f'stage index {idx} out of range for {self.spec} ({n} stages)')
        return idx % n

    def provenance(self) -> dict[str, Any]:
        prov = model_identity(self.spec, self.model)
        prov.update(weights=weights_provenance(self.spec, self.model, seed=self.seed),
                    preprocessing=self.data_config, layer=self.layer, tta=self.tta,
                    precision=str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'float32',
                    feature_dtype='float32', versions=package_versions())
        return prov

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stage is None:
            return self.model(x)
        feats = self.model.forward_intermediates(x, indices=[self.stage], intermediates_only=True,
                                                 stop_early=True)[0]
        return feats.mean(dim=(2, 3)) if feats.ndim == 4 else feats.mean(dim=1)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Features (float32, on CPU) of a normalised batch ``x`` (N, 3, H, W)."""
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        views = [x, x.flip(3), x.flip(2), x.flip((2, 3))][:TTA_VIEWS[self.tta]]
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = sum(self._forward(v).float() for v in views) / len(views)
        return out.float().cpu()


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


# ----------------------------------------------------------------------------------------------
# feature files
@dataclass
class FeatureFile:
    """Features as read back: ``paths[i]`` has ``features[i]`` and ``labels[i]`` (-1: unknown)."""

    paths: list[str]
    features: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> dict[str, str]:
        return dict(self.meta.get('failed', {}))

    @property
    def provenance(self) -> dict[str, Any]:
        return dict(self.meta.get('provenance', {}))

    def label_names(self) -> list[str | None]:
        return [self.class_names[v] if v >= 0 else None for v in self.labels]


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_features(path: str | os.PathLike, ff: FeatureFile) -> None:
    """Write ``ff`` to ``path`` (``.safetensors`` or ``.parquet``) atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    meta = dict(ff.meta, format=FORMAT, class_names=ff.class_names)
    try:
        if path.suffix == '.parquet':
            _write_parquet(tmp, ff, meta)
        else:
            from safetensors.torch import save_file

            meta['paths'] = ff.paths
            feats = torch.from_numpy(np.ascontiguousarray(ff.features, dtype=np.float32))
            labels = torch.from_numpy(np.ascontiguousarray(ff.labels, dtype=np.int64))
            save_file({'features': feats, 'labels': labels}, str(tmp), metadata={'mtdp_extract': json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_parquet(tmp: Path, ff: FeatureFile, meta: dict) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(f'Parquet output needs pyarrow: {_EVAL_EXTRA}') from e
    dim = ff.features.shape[1] if ff.features.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(ff.features, dtype=np.float32).reshape(-1))
    table = pa.table({
        'path': pa.array(ff.paths, pa.string()),
        'label': pa.array(ff.labels.astype(np.int64)),
        'label_name': pa.array(ff.label_names(), pa.string()),
        'feature': pa.FixedSizeListArray.from_arrays(flat, dim),
    })
    table = table.replace_schema_metadata({'mtdp_extract': json.dumps(meta)})
    pq.write_table(table, str(tmp))


def read_features(path: str | os.PathLike) -> FeatureFile:
    """Read a file written by :func:`write_features` / :func:`extract_features`."""
    path = Path(path)
    if path.suffix == '.parquet':
        try:
            import pyarrow.parquet as pq
        except ImportError as e:
            raise ImportError(f'Parquet input needs pyarrow: {_EVAL_EXTRA}') from e
        table = pq.read_table(str(path))
        meta = json.loads(table.schema.metadata[b'mtdp_extract'])
        col = table.column('feature').combine_chunks()
        dim = col.type.list_size
        feats = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
        paths = table.column('path').to_pylist()
        labels = np.asarray(table.column('label').to_pylist(), dtype=np.int64)
    else:
        from safetensors import safe_open

        with safe_open(str(path), framework='pt') as f:
            meta = json.loads(f.metadata()['mtdp_extract'])
            feats = f.get_tensor('features').numpy()
            labels = f.get_tensor('labels').numpy()
        paths = meta.pop('paths')
    if meta.get('format') != FORMAT:
        raise ValueError(f'{path} is not an mtdp features file (format {meta.get("format")!r})')
    class_names = meta.pop('class_names', [])
    return FeatureFile(list(paths), feats, labels, list(class_names), meta)


def _merge(order: list[str], rows: dict[str, tuple[np.ndarray, str | None]], meta: dict) -> FeatureFile:
    keys = [k for k in order if k in rows] + sorted(set(rows) - set(order))
    class_names = sorted({rows[k][1] for k in keys if rows[k][1] is not None})
    index = {c: i for i, c in enumerate(class_names)}
    dim = next((len(v[0]) for v in rows.values()), 0)
    feats = np.stack([rows[k][0] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    labels = np.asarray([index[rows[k][1]] if rows[k][1] is not None else -1 for k in keys], dtype=np.int64)
    return FeatureFile(keys, feats.astype(np.float32), labels, class_names, meta)


# ----------------------------------------------------------------------------------------------
# the run
def _progress(total: int, enabled: bool, desc: str):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is a nicety; extraction works without the eval extra
        return None
    return tqdm(total=total, unit='img', desc=desc, dynamic_ncols=True, file=sys.stderr)


def extract_source(extractor: FeatureExtractor, source: ImageSource, output: str | os.PathLike, *,
                   batch_size: int = 64, num_workers: int | None = None, on_error: str = 'skip',
                   save_every: int = 20000, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Extract the features of ``source`` into ``output`` with ``extractor``; returns run stats."""
    if on_error not in ('skip', 'error'):
        raise ValueError(f"on_error must be 'skip' or 'error', not {on_error!r}")
    output = Path(output)
    prov = extractor.provenance()
    rows: dict[str, tuple[np.ndarray, str | None]] = {}
    old_failed: dict[str, str] = {}
    runs: list[dict] = []
    if output.exists() and not overwrite:
        old = read_features(output)
        diff = [k for k in _RESUME_KEYS if old.provenance.get(k) != prov.get(k)]
        if diff:
            raise ValueError(f'{output} holds features from a different extraction ({", ".join(diff)} differ); '
                             'pass overwrite=True (--overwrite) or choose another output')
        for k, f, name in zip(old.paths, old.features, old.label_names()):
            rows[k] = (f, name)
        old_failed, runs = old.failed, list(old.meta.get('runs', []))
    todo = [i for i, k in enumerate(source.keys) if k not in rows]
    failed: dict[str, str] = {k: r for k, r in old_failed.items() if k not in set(source.keys) and k not in rows}
    n_skipped = len(source.keys) - len(todo)

    if num_workers is None:
        num_workers = min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(
        _ExtractionDataset(source, todo, extractor.transform), batch_size=batch_size, shuffle=False,
        num_workers=num_workers, collate_fn=_collate, pin_memory=extractor.device.type == 'cuda',
        persistent_workers=False, prefetch_factor=4 if num_workers > 0 else None)

    started = datetime.now(timezone.utc).isoformat(timespec='seconds')
    stats = {'n_input': len(source.keys), 'n_skipped_done': n_skipped, 'n_new': 0, 'n_failed': 0}

    def save() -> None:
        run = dict(started=started, n_new=stats['n_new'], n_failed=stats['n_failed'],
                   img_per_s=stats.get('img_per_s'))
        meta = {'provenance': prov, 'source': source.description, 'failed': failed,
                'n_failed': len(failed), 'runs': runs + [run]}
        write_features(output, _merge(source.keys, rows, meta))

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


def extract_features(model: str, input: Any, output: str | os.PathLike, *, seed: int = 0,
                     layer: str = 'pooled', tta: str = 'none', img_size: int | None = None,
                     device: str | None = 'auto', precision: str = 'auto', channels_last: bool | None = None,
                     labels: bool = True, split: str | None = None, image_column: str = 'image',
                     label_column: str | None = 'label', **run_kwargs: Any) -> dict[str, Any]:
    """Load ``model`` (a spec string), read ``input`` and write features to ``output``.

    ``run_kwargs`` go to :func:`extract_source` (batch_size, num_workers, on_error, save_every,
    overwrite, progress). Returns the run stats (counts, img/s, failed files).
    """
    source = make_source(input, labels=labels, split=split, image_column=image_column, label_column=label_column)
    extractor = FeatureExtractor(model, seed=seed, layer=layer, tta=tta, img_size=img_size, device=device,
                                 precision=precision, channels_last=channels_last)
    return extract_source(extractor, source, output, **run_kwargs)


# ----------------------------------------------------------------------------------------------
# command line
def _run_cli(args: argparse.Namespace) -> int:
    stats = extract_features(
        args.model, args.input, args.output, seed=args.seed, layer=args.layer, tta=args.tta,
        img_size=args.img_size, device=args.device, precision=args.precision, labels=not args.no_labels,
        split=args.split, image_column=args.image_column, label_column=args.label_column,
        batch_size=args.batch_size, num_workers=args.workers, on_error=args.on_error,
        save_every=args.save_every, overwrite=args.overwrite, progress=not args.no_progress)
    failed = stats.pop('failed')
    print(json.dumps(stats, indent=1))
    if failed:
        print(f'{len(failed)} unreadable image(s) skipped, listed in the output metadata under "failed"',
              file=sys.stderr)
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--model', required=True, help='timm name, hf-hub:ORG/NAME, local-dir:PATH or random:ARCH')
    p.add_argument('--input', required=True,
                   help='folder (recursive; parent folder = label), .txt/.csv file list, or datasets:NAME')
    p.add_argument('--output', required=True, help='.safetensors or .parquet; an existing one is resumed')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: min(8, CPUs))')
    p.add_argument('--device', default='auto')
    p.add_argument('--precision', default='auto', choices=['auto', 'fp32', 'bf16', 'fp16'],
                   help='autocast dtype (auto: fp16 on CUDA, fp32 on CPU)')
    p.add_argument('--layer', default='pooled',
                   help="'pooled' (final pooled features), 'trunc' (stage before last, pooled: "
                        "ResNet50 layer3 -> 1024-d, as CLAM) or a stage index")
    p.add_argument('--tta', default='none', choices=sorted(TTA_VIEWS), help='average over flipped views')
    p.add_argument('--img-size', type=int, default=None, help="override the model's input size")
    p.add_argument('--on-error', default='skip', choices=['skip', 'error'],
                   help='unreadable images: skip and list them in the metadata (default) or stop')
    p.add_argument('--seed', type=int, default=0, help='initialisation seed for random:ARCH')
    p.add_argument('--no-labels', action='store_true', help='do not take labels from folder names')
    p.add_argument('--split', default=None, help='datasets source: split (default train)')
    p.add_argument('--image-column', default='image')
    p.add_argument('--label-column', default='label')
    p.add_argument('--save-every', type=int, default=20000, help='write progress every N new images')
    p.add_argument('--overwrite', action='store_true', help='start over instead of resuming')
    p.add_argument('--no-progress', action='store_true')


def add_cli(subparsers) -> argparse.ArgumentParser:
    """Add ``mtdp extract`` to an argparse ``subparsers`` object."""
    p = subparsers.add_parser('extract', help='extract features of many images into safetensors/Parquet',
                              description=__doc__.split('\n\n')[0])
    add_arguments(p)
    p.set_defaults(func=_run_cli)
    return p
