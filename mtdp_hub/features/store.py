"""Feature files: one row per image (path, features, label) with the run's metadata.

Two formats, the same content: ``.safetensors`` (``features`` [N, D] float32, ``labels`` [N]
int64, the paths and metadata as JSON in its header, limit 100 MB: use Parquet beyond ~1M
images) and ``.parquet`` (columns ``path``, ``label``, ``label_name``, ``feature``; needs
pyarrow). Files are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .._io import atomic_path
from ..errors import FeatureFileError, MissingDependencyError
from .sources import EVAL_EXTRA

__all__ = ['FORMAT', 'FeatureFile', 'write_features', 'read_features', 'read_meta', 'merge_rows']

FORMAT = 'mtdp-features/1'


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


def write_features(path: str | os.PathLike, ff: FeatureFile) -> None:
    """Write ``ff`` to ``path`` (``.safetensors`` or ``.parquet``) atomically."""
    path = Path(path)
    meta = dict(ff.meta, format=FORMAT, class_names=ff.class_names)
    with atomic_path(path) as tmp:
        if path.suffix == '.parquet':
            _write_parquet(tmp, ff, meta)
        else:
            meta['paths'] = ff.paths
            feats = torch.from_numpy(np.ascontiguousarray(ff.features, dtype=np.float32))
            labels = torch.from_numpy(np.ascontiguousarray(ff.labels, dtype=np.int64))
            save_file(
                {'features': feats, 'labels': labels}, str(tmp), metadata={'mtdp_extract': json.dumps(meta)}
            )


def _write_parquet(tmp: Path, ff: FeatureFile, meta: dict) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError(f'Parquet output needs pyarrow: {EVAL_EXTRA}') from e
    dim = ff.features.shape[1] if ff.features.ndim == 2 else 0
    flat = pa.array(np.ascontiguousarray(ff.features, dtype=np.float32).reshape(-1))
    table = pa.table(
        {
            'path': pa.array(ff.paths, pa.string()),
            'label': pa.array(ff.labels.astype(np.int64)),
            'label_name': pa.array(ff.label_names(), pa.string()),
            'feature': pa.FixedSizeListArray.from_arrays(flat, dim),
        }
    )
    table = table.replace_schema_metadata({'mtdp_extract': json.dumps(meta)})
    pq.write_table(table, str(tmp))


def _pq():
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError(f'Parquet input needs pyarrow: {EVAL_EXTRA}') from e
    return pq


def _not_features(path: Path, why: str) -> FeatureFileError:
    return FeatureFileError(f'{path} is not a readable mtdp features file ({why})')


def _check_format(path: Path, raw: Any) -> dict:
    try:
        meta = json.loads(raw)
    except (TypeError, ValueError) as e:
        raise _not_features(path, f'no mtdp metadata: {e}') from e
    if not isinstance(meta, dict) or meta.get('format') != FORMAT:
        got = meta.get('format') if isinstance(meta, dict) else None
        raise FeatureFileError(f'{path} is not an mtdp features file (format {got!r})')
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of a features file without its rows (cheap: the header only).

    Raises :class:`FeatureFileError` naming the file when it is not a readable features file.
    """
    path = Path(path)
    try:
        if path.suffix == '.parquet':
            raw = (_pq().read_schema(str(path)).metadata or {}).get(b'mtdp_extract')
        else:
            with safe_open(str(path), framework='pt') as f:
                raw = (f.metadata() or {}).get('mtdp_extract')
    except (MissingDependencyError, FeatureFileError):
        raise
    except Exception as e:  # pyarrow and safetensors raise their own types for a broken file
        raise _not_features(path, f'{type(e).__name__}: {e}') from e
    return _check_format(path, raw)


def read_features(path: str | os.PathLike) -> FeatureFile:
    """Read a file written by :func:`write_features` / :func:`extract_features`.

    Raises :class:`FeatureFileError` naming the file when it is corrupt or not a features file.
    """
    path = Path(path)
    try:
        return _read_features(path)
    except (MissingDependencyError, FeatureFileError):
        raise
    except Exception as e:  # a corrupt file: pyarrow / safetensors / json / missing columns
        raise _not_features(path, f'{type(e).__name__}: {e}') from e


def _read_features(path: Path) -> FeatureFile:
    if path.suffix == '.parquet':
        table = _pq().read_table(str(path))
        meta = _check_format(path, (table.schema.metadata or {}).get(b'mtdp_extract'))
        col = table.column('feature').combine_chunks()
        dim = col.type.list_size
        feats = col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(table), dim)
        paths = table.column('path').to_pylist()
        labels = np.asarray(table.column('label').to_pylist(), dtype=np.int64)
    else:
        with safe_open(str(path), framework='pt') as f:
            meta = _check_format(path, (f.metadata() or {}).get('mtdp_extract'))
            feats = f.get_tensor('features').numpy()
            labels = f.get_tensor('labels').numpy()
        paths = meta.pop('paths')
    class_names = meta.pop('class_names', [])
    return FeatureFile(list(paths), feats, labels, list(class_names), meta)


def merge_rows(order: list[str], rows: dict[str, tuple[np.ndarray, str | None]], meta: dict) -> FeatureFile:
    keys = [k for k in order if k in rows] + sorted(set(rows) - set(order))
    class_names = sorted({rows[k][1] for k in keys if rows[k][1] is not None})
    index = {c: i for i, c in enumerate(class_names)}
    dim = next((len(v[0]) for v in rows.values()), 0)
    feats = np.stack([rows[k][0] for k in keys]) if keys else np.zeros((0, dim), np.float32)
    labels = np.asarray([index[rows[k][1]] if rows[k][1] is not None else -1 for k in keys], dtype=np.int64)
    return FeatureFile(keys, feats.astype(np.float32), labels, class_names, meta)
