"""The task pool: which classification tasks the backbone is pre-trained on.

A pool file (YAML) lists tasks::

    train_splits: [train]          # optional; the released models used [train, val, test]
    tasks:
      - root: /data/ulg_bonemarrow        # original layout {root}/{train,val,test}/{class}/*
      - name: crc_binary                  # default name: the root's basename (the head's name)
        root: /data/crc
        classes: [H, AC]                  # a subset of the class folders, in label order
        groups: prefix                    # group id = file name prefix before the first '_'
      - name: my_hf_task                  # a Hugging Face `datasets` source
        hf: {path: imagefolder, data_dir: /data/x}   # kwargs of datasets.load_dataset (or a hub id)
        image_column: image
        label_column: label
        splits: {val: validation}         # our split name -> the source's split name

A split may be missing (a task without validation data, as UMCM in the paper). Every problem
found here raises :class:`PoolError` naming the task, before any training starts.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mtdp_hub.errors import MtdpError, TaskFolderError, UnreadableImageError
from mtdp_hub.images import open_rgb, to_rgb
from mtdp_hub.tasks import SPLITS, read_task_folder

from .config import load_yaml

__all__ = ['PoolError', 'Task', 'TaskPool', 'load_pool', 'SPLITS']

_TASK_KEYS = {
    'name',
    'root',
    'classes',
    'groups',
    'hf',
    'image_column',
    'label_column',
    'group_column',
    'splits',
}
_POOL_KEYS = {'tasks', 'train_splits'}
_HF_SPLIT_ALIASES = {'train': ('train',), 'val': ('val', 'validation', 'valid'), 'test': ('test',)}


class PoolError(MtdpError, ValueError):
    """A pool definition that cannot be trained on; the message names the task."""


@dataclass
class Split:
    """One split of one task: how to reach each image, its label and optional group id."""

    items: list[Any]  # folder tasks: paths; datasets tasks: row indices
    labels: list[int]
    groups: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)


@dataclass
class Task:
    """A classification task: a name (the head's name), its classes and its splits."""

    name: str
    classes: list[str]
    splits: dict[str, Split]
    source: str  # the root folder or the datasets source, for messages and the card
    _hf: Any = None  # a datasets.DatasetDict (for datasets tasks)
    _hf_split_names: dict[str, str] = field(default_factory=dict)
    _image_column: str = 'image'

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self, split: str, index: int) -> str:
        """A human-readable reference to one image, for error messages."""
        item = self.splits[split].items[index]
        if self._hf is None:
            return str(item)
        return f'{self.source}[{self._hf_split_names[split]}][{item}]'

    def load(self, split: str, index: int):
        """The image as RGB PIL; raises ``mtdp_hub.errors.UnreadableImageError``."""
        item = self.splits[split].items[index]
        if self._hf is None:
            return open_rgb(item)
        return _decode_hf(
            self._hf[self._hf_split_names[split]][int(item)][self._image_column], self.describe(split, index)
        )

    def remove(self, split: str, indices: set[int]) -> None:
        """Drop images (e.g. undecodable ones under ``bad_images: skip``)."""
        s = self.splits[split]
        keep = [i for i in range(len(s)) if i not in indices]
        self.splits[split] = Split(
            [s.items[i] for i in keep],
            [s.labels[i] for i in keep],
            [s.groups[i] for i in keep] if s.groups else [],
        )


def _decode_hf(value: Any, where: str):
    if isinstance(value, Image.Image):
        return to_rgb(value)
    if isinstance(value, dict):
        if value.get('bytes'):
            try:
                with Image.open(io.BytesIO(value['bytes'])) as im:
                    im.load()
                    return to_rgb(im)
            except Exception as e:  # Pillow raises many types for broken data
                raise UnreadableImageError(where, f'{type(e).__name__}: {e}') from e
        if value.get('path'):
            return open_rgb(value['path'])
    raise UnreadableImageError(where, f'no image data in {type(value).__name__}')


@dataclass
class TaskPool:
    tasks: list[Task]
    train_splits: list[str] = field(default_factory=lambda: ['train'])

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)

    def sizes(self, splits: Sequence[str]) -> list[int]:
        return [sum(len(t.splits[s]) for s in splits if s in t.splits) for t in self.tasks]

    def summary_markdown(self) -> str:
        rows = ['| task | classes | ' + ' | '.join(SPLITS) + ' | source |', '|---|---|---|---|---|---|']
        for t in self.tasks:
            counts = ' | '.join(str(len(t.splits[s])) if s in t.splits else '-' for s in SPLITS)
            rows.append(f'| {t.name} | {t.num_classes} ({", ".join(t.classes)}) | {counts} | `{t.source}` |')
        return '\n'.join(rows)


# ---------------------------------------------------------------------------------------------
def _folder_task(spec: dict, name: str, base: Path) -> Task:
    """A task folder, read by :func:`mtdp_hub.tasks.read_task_folder` (the rules ``mtdp evaluate`` uses)."""
    root = Path(os.path.expanduser(str(spec['root'])))
    if not root.is_absolute():
        root = base / root
    grouped = spec.get('groups')
    if grouped not in (None, False, 'prefix'):
        raise PoolError(
            f"task {name!r}: groups must be 'prefix' (file name before the first '_'), got {grouped!r}"
        )
    wanted = spec.get('classes')
    try:
        folder = read_task_folder(root, classes=[str(c) for c in wanted] if wanted else None)
    except TaskFolderError as e:
        raise PoolError(f'task {name!r}: {e}') from e
    splits = {
        s: Split([str(p) for p in split.paths], list(split.labels), split.groups if grouped else [])
        for s, split in folder.splits.items()
        if len(split)
    }
    return Task(name, folder.class_names, splits, str(folder.root))


def _hf_task(spec: dict, name: str) -> Task:
    try:
        import datasets
    except ImportError as e:
        raise PoolError(
            f'task {name!r}: a datasets source needs `pip install datasets` (the [train] extra)'
        ) from e
    source = spec['hf']
    kwargs = {'path': source} if isinstance(source, str) else dict(source)
    try:
        loaded = datasets.load_dataset(**kwargs)
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        raise PoolError(
            f'task {name!r}: cannot load datasets source {kwargs}: {type(e).__name__}: {e}'
        ) from e
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({'train': loaded})
    image_col, label_col = spec.get('image_column', 'image'), spec.get('label_column', 'label')
    group_col = spec.get('group_column')
    mapping = dict(spec.get('splits') or {})
    for ours in mapping:
        if ours not in SPLITS:
            raise PoolError(f'task {name!r}: unknown split {ours!r} in splits (use {", ".join(SPLITS)})')
    split_names = {}
    for ours in SPLITS:
        candidates = [mapping[ours]] if ours in mapping else _HF_SPLIT_ALIASES[ours]
        for c in candidates:
            if c in loaded:
                split_names[ours] = c
                break
        else:
            if ours in mapping:
                raise PoolError(
                    f'task {name!r}: the source has no split {mapping[ours]!r} (has {", ".join(loaded)})'
                )
    first = loaded[next(iter(split_names.values()))] if split_names else None
    if first is None:
        raise PoolError(f'task {name!r}: the source has no train/val/test split (has {", ".join(loaded)})')
    for col in (image_col, label_col) + ((group_col,) if group_col else ()):
        if col not in first.column_names:
            raise PoolError(
                f'task {name!r}: the source has no column {col!r} (columns: {", ".join(first.column_names)})'
            )
    feature = first.features[label_col]
    names = getattr(feature, 'names', None)
    if names:
        classes = [str(c) for c in names]
        to_label = {i: i for i in range(len(classes))}
    else:
        values = sorted({v for s in split_names.values() for v in loaded[s][label_col]})
        classes = [str(v) for v in values]
        to_label = {v: i for i, v in enumerate(values)}
    wanted = spec.get('classes')
    if wanted:
        wanted = [str(c) for c in wanted]
        missing = [c for c in wanted if c not in classes]
        if missing:
            raise PoolError(f'task {name!r}: classes {missing} not in the source (has {classes})')
        remap = {old: wanted.index(classes[new]) for old, new in to_label.items() if classes[new] in wanted}
        to_label, classes = remap, wanted
    splits = {}
    for ours, theirs in split_names.items():
        ds = loaded[theirs]
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
        loaded[theirs] = ds
        raw_labels = ds[label_col]
        rows = [i for i, v in enumerate(raw_labels) if v in to_label]
        if rows:
            groups = [str(g) for g in ds[group_col]] if group_col else []
            splits[ours] = Split(
                rows, [to_label[raw_labels[i]] for i in rows], [groups[i] for i in rows] if groups else []
            )
    return Task(
        name, classes, splits, str(kwargs), _hf=loaded, _hf_split_names=split_names, _image_column=image_col
    )


def _validate(task: Task, train_splits: Sequence[str], val_split: str | None) -> None:
    name = task.name
    if not task.splits:
        raise PoolError(f'task {name!r}: no images found in {task.source}')
    if not any(s in task.splits for s in train_splits):
        raise PoolError(
            f'task {name!r}: no training images (splits {", ".join(train_splits)} are empty or missing '
            f'in {task.source})'
        )
    if task.num_classes < 2:
        raise PoolError(
            f'task {name!r}: has {task.num_classes} class ({", ".join(task.classes)}); '
            'a classification task needs at least 2'
        )
    train_labels = {lab for s in train_splits if s in task.splits for lab in task.splits[s].labels}
    for s, split in task.splits.items():
        extra = set(split.labels) - train_labels
        if extra:
            raise PoolError(
                f'task {name!r}: classes {sorted(task.classes[i] for i in extra)} appear in split {s!r} '
                'but not in the training split(s)'
            )
    for s, split in task.splits.items():
        missing = set(range(task.num_classes)) - set(split.labels)
        if missing:
            raise PoolError(
                f'task {name!r}: split {s!r} has no images of classes '
                f'{sorted(task.classes[i] for i in missing)} (every class must be in every split)'
            )


_NAME = re.compile(r'^[A-Za-z0-9_-]+$')


def _check_name(name: str) -> None:
    """A task name names its head (a ``torch.nn.ModuleDict`` key): letters, digits, ``_`` and ``-``
    only, and not an attribute of ``nn.ModuleDict`` (``type``, ``train``, ``eval``, ``to``, ...)."""
    if not _NAME.match(name):
        raise PoolError(
            f'task {name!r}: a task name may hold only letters, digits, "_" and "-" (it names the '
            'task head); give the task a "name"'
        )
    import torch

    if hasattr(torch.nn.ModuleDict(), name):
        raise PoolError(
            f'task {name!r}: the name is an attribute of torch.nn.ModuleDict (it names the task head); '
            'give the task another "name"'
        )


def load_pool(
    path_or_spec: str | os.PathLike | dict,
    train_splits: Sequence[str] | None = None,
    val_split: str | None = 'val',
) -> TaskPool:
    """Read and validate a pool definition (a YAML file or the same structure as a dict)."""
    if isinstance(path_or_spec, dict):
        spec, base, where = path_or_spec, Path.cwd(), 'pool'
    else:
        path = Path(path_or_spec)
        where = str(path)
        try:
            spec = load_yaml(path.read_text(), f'pool file {path}', PoolError)
        except OSError as e:
            raise PoolError(f'cannot read pool file {path}: {e}') from e
        base = path.parent
    if not isinstance(spec, dict) or not isinstance(spec.get('tasks'), list) or not spec['tasks']:
        raise PoolError(f'{where}: a pool must be a mapping with a non-empty list under "tasks"')
    unknown = set(spec) - _POOL_KEYS
    if unknown:
        raise PoolError(f'{where}: unknown pool keys {sorted(unknown)} (known: {sorted(_POOL_KEYS)})')
    splits = list(train_splits or spec.get('train_splits') or ['train'])
    # Names and keys first: cheap checks before any folder is listed.
    names = []
    for i, t in enumerate(spec['tasks']):
        if not isinstance(t, dict):
            raise PoolError(f'{where}: task #{i + 1} must be a mapping, got {t!r}')
        label = t.get('name') or (Path(str(t['root']).rstrip('/\\')).name if t.get('root') else f'#{i + 1}')
        unknown = set(t) - _TASK_KEYS
        if unknown:
            raise PoolError(f'task {label!r}: unknown keys {sorted(unknown)} (known: {sorted(_TASK_KEYS)})')
        if ('root' in t) == ('hf' in t):
            raise PoolError(
                f'task {label!r}: give exactly one of "root" (a folder) or "hf" (a datasets source)'
            )
        if 'hf' in t and not t.get('name'):
            raise PoolError(f'task {label!r}: a datasets task needs a "name"')
        _check_name(str(label))
        names.append(str(label))
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise PoolError(
            f'{where}: duplicate task names {dupes}; give each task a distinct "name" '
            '(it names the task head)'
        )
    tasks = []
    for name, t in zip(names, spec['tasks']):
        task = _folder_task(t, name, base) if 'root' in t else _hf_task(t, name)
        _validate(task, splits, val_split)
        tasks.append(task)
    return TaskPool(tasks, splits)
