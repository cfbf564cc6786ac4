"""Task folders: the one reader of ``{root}/{split}/{class}/*``, shared by evaluation and training.

The layout is the original one: ``{root}/{train,val,test}/{class}/`` holding images (any depth
below the class folder). Rules, the same for ``mtdp evaluate`` and ``python -m training``:

- classes are the class folders found in any split, sorted by name (or a given list, in that
  label order); hidden folders (``.ipynb_checkpoints``, ``.cache``, ``__MACOSX``, see
  :func:`mtdp_hub.images.is_hidden`) are never classes and are never searched for images;
- a split folder that is absent is simply not there (UMCM had no val split);
- the group id of an image (patient, slide or source image) is its file-name prefix before the
  first ``_``, as in the original ``MultiSetImageFolder``: ``p17_0003.png`` belongs to group
  ``p17``; a name without ``_`` is its own group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import TaskFolderError
from .images import find_images, is_hidden

__all__ = ['SPLITS', 'Split', 'Task', 'group_id', 'read_task_folder']

SPLITS = ('train', 'val', 'test')


def group_id(path: str | os.PathLike) -> str:
    """The file-name prefix before the first ``_`` (the whole stem when there is none)."""
    p = Path(path)
    return p.name.split('_', 1)[0] if '_' in p.name else p.stem


@dataclass
class Split:
    """One split: absolute image paths and their label indices."""

    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def groups(self) -> list[str]:
        return [group_id(p) for p in self.paths]


@dataclass
class Task:
    """A classification task: class names and its splits (only those found)."""

    root: Path
    class_names: list[str]
    splits: dict[str, Split]

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def metric(self) -> str:
        """The paper's metric: ROC AUC for binary tasks, accuracy otherwise."""
        return 'roc_auc' if self.n_classes == 2 else 'accuracy'

    def has(self, split: str) -> bool:
        return split in self.splits and len(self.splits[split]) > 0

    def label_of(self) -> dict[str, int]:
        return {str(p): y for s in self.splits.values() for p, y in zip(s.paths, s.labels)}


def _class_folders(root: Path, splits: Sequence[str]) -> list[str]:
    try:
        return sorted(
            {c.name for s in splits for c in (root / s).iterdir() if c.is_dir() and not is_hidden(c.name)}
        )
    except OSError as e:
        raise TaskFolderError(f'cannot read task folder {root}: {e}') from e


def read_task_folder(
    root: str | os.PathLike,
    *,
    classes: Sequence[str] | None = None,
    required: Sequence[str] = (),
    max_per_class: int | None = None,
) -> Task:
    """Read ``{root}/{split}/{class}/*``.

    Args:
        classes: the classes to keep, in label order (default: every class folder, sorted).
        required: splits that must be present (e.g. ``('train', 'test')`` for evaluation).
        max_per_class: keep the first N images of each class in each split.
    Raises:
        TaskFolderError naming the folder: no such folder, no split folder, a required split
        missing, or fewer than two classes.
    """
    root = Path(os.path.abspath(os.path.expanduser(root)))
    if not root.is_dir():
        raise TaskFolderError(f'task folder {root} does not exist or is not a folder')
    present = [s for s in SPLITS if (root / s).is_dir()]
    if not present:
        raise TaskFolderError(
            f'task folder {root} has none of the split folders {", ".join(SPLITS)} '
            '(expected {root}/{train,val,test}/{class}/*)'
        )
    missing = [s for s in required if s not in present]
    if missing:
        raise TaskFolderError(
            f'task folder {root} needs the split folder(s) {", ".join(missing)} (found {", ".join(present)})'
        )
    class_names = [str(c) for c in classes] if classes else _class_folders(root, present)
    if len(class_names) < 2:
        raise TaskFolderError(
            f'task folder {root} has {len(class_names)} class folder(s) '
            f'({", ".join(class_names) or "none"}); a classification task needs at least 2'
        )
    splits = {}
    for s in present:
        split = Split()
        for label, cls in enumerate(class_names):
            folder = root / s / cls
            paths = find_images(folder) if folder.is_dir() else []
            split.paths += paths[:max_per_class]
            split.labels += [label] * len(paths[:max_per_class])
        splits[s] = split
    return Task(root, class_names, splits)
