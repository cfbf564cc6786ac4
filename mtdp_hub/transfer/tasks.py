"""Evaluation task folders in the original layout ``{root}/{train,val,test}/{class}/*``.

A missing ``val`` split is allowed (UMCM had none). The group id of an image (patient, slide or
source image) is its file-name prefix before the first ``_``, as the original
``MultiSetImageFolder``: ``p17_0003.png`` belongs to group ``p17``; a name without ``_`` is its own
group.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mtdp_hub.images import find_images

SPLITS = ('train', 'val', 'test')


def group_id(path: str | os.PathLike) -> str:
    """The file-name prefix before the first ``_`` (the whole stem when there is none)."""
    p = Path(path)
    return p.name.split('_', 1)[0] if '_' in p.name else p.stem


@dataclass
class Split:
    paths: list[Path] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def groups(self) -> list[str]:
        return [group_id(p) for p in self.paths]


@dataclass
class Task:
    """A classification task: class names and its train / val (optional) / test splits."""

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


def load_task(root: str | os.PathLike, *, max_per_class: int | None = None) -> Task:
    """Read a task folder; ``max_per_class`` keeps the first N images of each class and split."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f'task folder {root} does not exist')
    present = [s for s in SPLITS if (root / s).is_dir()]
    missing = [s for s in ('train', 'test') if s not in present]
    if missing:
        raise ValueError(f'task {root} needs {{train,test}}/ sub-folders (val/ optional); missing: {missing}')
    class_names = sorted({c.name for s in present for c in (root / s).iterdir() if c.is_dir()})
    if len(class_names) < 2:
        raise ValueError(f'task {root} has {len(class_names)} class folder(s); at least 2 are needed')
    splits = {}
    for s in present:
        split = Split()
        for label, cls in enumerate(class_names):
            folder = root / s / cls
            paths = find_images(folder) if folder.is_dir() else []
            for p in paths[:max_per_class]:
                split.paths.append(p.resolve())
                split.labels.append(label)
        splits[s] = split
    empty = [s for s in ('train', 'test') if len(splits[s]) == 0]
    if empty:
        raise ValueError(f'task {root}: split(s) {empty} hold no images')
    return Task(root, class_names, splits)
