"""Where the images to extract come from: a folder, a file list, a ``datasets`` source or a list of paths.

- a folder: every image below it (:func:`mtdp_hub.images.find_images`), keys relative to it,
  label = the image's parent folder name;
- a file list (``.txt``/``.csv``/``.tsv``/``.lst``): one ``path`` or ``path,label`` per line,
  relative to the list's folder, an optional header line;
- ``datasets:NAME_OR_SAVED_DIR`` with ``split``/``image_column``/``label_column``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputNotFoundError, MissingDependencyError, UnreadableImageError
from ..images import find_images, open_rgb, to_rgb

__all__ = ['ImageSource', 'make_source', 'EVAL_EXTRA']

EVAL_EXTRA = 'pip install mtdp-hub[eval]'


@dataclass
class ImageSource:
    """Images to extract: ``keys`` (stored as ``path``), optional label names, and how to open one."""

    keys: list[str]
    label_names: list[str | None]
    description: str
    root: Path | None = None  # keys are relative to it (folder / file list)
    dataset: Any = None  # a datasets.Dataset (keys are row indices)
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


def _datasets_source(
    name: str, split: str | None, image_column: str, label_column: str | None, labels: bool
) -> ImageSource:
    try:
        import datasets
    except ImportError as e:
        raise MissingDependencyError(f'a datasets source needs the datasets package: {EVAL_EXTRA}') from e
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


def make_source(
    input: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    labels: bool = True,
    split: str | None = None,
    image_column: str = 'image',
    label_column: str | None = 'label',
) -> ImageSource:
    """An :class:`ImageSource` from a folder, a file list, a ``datasets:`` source or a list of paths."""
    if isinstance(input, (list, tuple)):
        keys = [str(p) for p in input]
        names = [(Path(k).parent.name if labels else None) for k in keys]
        return ImageSource(keys, names, f'{len(keys)} paths')
    text = str(input)
    if text.startswith('datasets:'):
        return _datasets_source(text[len('datasets:') :], split, image_column, label_column, labels)
    path = Path(text)
    if path.is_dir():
        return _folder_source(path, labels)
    if path.is_file() and path.suffix.lower() in ('.txt', '.csv', '.lst', '.tsv'):
        return _list_source(path, labels)
    if path.is_file():
        return ImageSource([path.name], [None], f'file {path}', root=path.parent)
    raise InputNotFoundError(f'no such input: {path} (a folder, a .txt/.csv file list or datasets:NAME)')
