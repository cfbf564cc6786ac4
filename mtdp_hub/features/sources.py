"""Where the images to extract come from: a folder, a file list, a ``datasets`` source or a list of paths.

- a folder: every image below it (:func:`mtdp_hub.images.find_images`: hidden folders skipped,
  symlinks followed), keys relative to it. **Label rule** (the one of task folders, shared with
  training and evaluation): the label is the FIRST folder under the root, the class folder,
  whatever the depth below it: ``tumor/slide7/x.png`` is ``tumor``; a file directly in the
  root has no label;
- a file list, paths relative to the list's folder, blank lines and ``#`` lines ignored, an
  optional header line (``path``/``file``/``filename`` first):

  - ``.csv``: parsed with the :mod:`csv` module (quote names holding ``,``): ``path[,label]``;
  - ``.tsv``: ``path[<TAB>label]``;
  - ``.txt``/``.lst``: one path per line (commas and spaces are part of the name); a TAB,
    when present, separates the path from a label;

  a path listed twice is kept once (the first line); listed twice with different labels it is
  refused, naming both lines;
- ``datasets:NAME_OR_SAVED_DIR`` with ``split``/``image_column``/``label_column``.

Keys are stored as text: a file name that is not valid UTF-8 (Python gives it as a str with
surrogate escapes) is stored as its bytes decoded with ``backslashreplace``
(:func:`storage_key`: ``caf\\xe9.png``); the file itself is still opened by its real name.

:attr:`ImageSource.origin` identifies where keys point (the root folder, the dataset): a resumed
output must come from the same origin.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputNotFoundError, InvalidOptionError, MissingDependencyError, UnreadableImageError
from ..images import find_images, open_rgb, to_rgb

__all__ = ['ImageSource', 'make_source', 'storage_key', 'EVAL_EXTRA']

EVAL_EXTRA = 'pip install mtdp-hub[eval]'
_HEADER_NAMES = ('path', 'file', 'filename')


def storage_key(name: str) -> str:
    """``name`` as stored in feature files: unchanged when it is valid text, else (a non-UTF-8 file
    name decoded by Python with surrogate escapes) its bytes decoded with ``backslashreplace``."""
    try:
        name.encode('utf-8')
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode('utf-8', 'backslashreplace')


@dataclass
class ImageSource:
    """Images to extract: ``keys`` (stored as ``path``), optional label names, and how to open one."""

    keys: list[str]
    label_names: list[str | None]
    description: str
    root: Path | None = None  # keys are relative to it (folder / file list)
    dataset: Any = None  # a datasets.Dataset (keys are row indices)
    image_column: str = 'image'
    files: list[str] | None = None  # the real file names when they differ from the keys (see storage_key)
    origin: str | None = None  # what keys are relative to; a resumed output must have the same

    def __post_init__(self):
        if self.origin is None:
            self.origin = str(self.root.resolve()) if self.root is not None else self.description

    def path(self, i: int) -> Path:
        """The file of image ``i`` (file sources only)."""
        path = Path(self.files[i] if self.files is not None else self.keys[i])
        return path if self.root is None or path.is_absolute() else self.root / path

    def fingerprint(self, i: int) -> str | None:
        """``size:mtime_ns`` of image ``i``'s file (``None`` for datasets or a file that cannot be read):
        a resumed run extracts again an image whose file changed since."""
        if self.dataset is not None:
            return None
        try:
            st = os.stat(self.path(i))
        except OSError:
            return None
        return f'{st.st_size}:{st.st_mtime_ns}'

    def open(self, i: int):
        if self.dataset is None:
            return open_rgb(self.path(i))
        try:
            im = self.dataset[i][self.image_column]
            return to_rgb(im)
        except Exception as e:  # decoding happens inside datasets; report like a file
            raise UnreadableImageError(self.keys[i], f'{type(e).__name__}: {e}') from e


def _make_file_source(names: list[str], labels: list[str | None], description: str, root: Path | None):
    keys = [storage_key(n) for n in names]
    files = names if keys != names else None
    return ImageSource(keys, labels, description, root=root, files=files)


def _folder_source(root: Path, labels: bool) -> ImageSource:
    paths = find_images(root)
    rels = [p.relative_to(root).parts for p in paths]
    names = [(r[0] if labels and len(r) > 1 else None) for r in rels]  # the class folder (first level)
    return _make_file_source(['/'.join(r) for r in rels], names, f'folder {root}', root)


def _list_rows(list_file: Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of a file list, by the rules of its suffix (module docstring)."""
    text = list_file.read_text(encoding='utf-8', errors='surrogateescape')
    suffix = list_file.suffix.lower()
    if suffix == '.csv':
        reader = csv.reader(text.splitlines(keepends=True))
        return [(reader.line_num, [f.strip() for f in row]) for row in reader]
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = [f.strip() for f in line.split('\t', 1)] if '\t' in line else [line.strip()]
        rows.append((n, fields))
    return rows


def _list_source(list_file: Path, labels: bool) -> ImageSource:
    keys: list[str] = []
    names: list[str | None] = []
    first_line: dict[str, int] = {}
    for n, fields in _list_rows(list_file):
        if not fields or not fields[0] or fields[0].startswith('#'):
            continue
        path, label = fields[0], (fields[1] if len(fields) > 1 else '')
        if path.lower() in _HEADER_NAMES and not keys:
            continue  # a header line
        name = (label or None) if labels else None
        if path in first_line:
            j = keys.index(path)
            if names[j] != name:
                raise InvalidOptionError(
                    f'{list_file}: {path} is listed on line {first_line[path]} with label {names[j]!r} '
                    f'and on line {n} with label {name!r}'
                )
            continue  # a duplicated line: the first is kept
        first_line[path] = n
        keys.append(path)
        names.append(name)
    return _make_file_source(keys, names, f'file list {list_file}', list_file.parent)


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
    return ImageSource(
        keys,
        names,
        f'datasets {name} [{split_name}]',
        dataset=ds,
        image_column=image_column,
        origin=f'datasets {name}',  # keys carry the split: splits may share an output
    )


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
        src = _make_file_source(keys, names, f'{len(keys)} paths', None)
        relative = any(not Path(k).is_absolute() for k in keys)
        src.origin = f'paths relative to {os.getcwd()}' if relative else 'absolute paths'
        return src
    text = str(input)
    if text.startswith('datasets:'):
        return _datasets_source(text[len('datasets:') :], split, image_column, label_column, labels)
    path = Path(text)
    if path.is_dir():
        return _folder_source(path, labels)
    if path.is_file() and path.suffix.lower() in ('.txt', '.csv', '.lst', '.tsv'):
        return _list_source(path, labels)
    if path.is_file():
        return _make_file_source([path.name], [None], f'file {path}', path.parent)
    raise InputNotFoundError(f'no such input: {path} (a folder, a .txt/.csv file list or datasets:NAME)')
