"""Run the paper's evaluation of several backbones on one task, side by side.

``linear``: features of every split are extracted once per (model, seed-if-random) and cached
under ``{out}/cache/`` (resumable :mod:`mtdp_hub.features` files), so several classifiers and
seeds reuse them; C is tuned by grouped CV on train+val, scored on test. ``finetune``: see
:mod:`mtdp_hub.evaluation.finetune`. Seeds change what is random: the initialisation of
``random:`` models, fine-tuning (head init, data order) and the CV fold shuffling.

A fixed-weight backbone in ``linear`` mode is one deterministic model: its features are computed
once and its seeds only reshuffle the CV folds (and the liblinear state), so its std is CV noise,
not model variance. Every run records ``independent`` (True for ``random:`` models and for
fine-tuning, False for a fixed backbone in linear mode); the report states each std's source and
applies the significance rule described in :mod:`mtdp_hub.evaluation.metrics`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidOptionError, TaskFolderError
from ..features import FeatureExtractor, extract_source, make_source, read_features
from ..features.sources import storage_key
from ..features.specs import is_random, package_versions, spec_slug
from ..tasks import Task, group_id, read_task_folder
from .finetune import FinetuneConfig, finetune
from .linear import C_GRID, fit_linear
from .report import SIGNIFICANCE_RULE, summarize, write_report

__all__ = ['MODES', 'evaluate', 'load_task', 'cached_features']

MODES = ('linear', 'finetune')


def load_task(root: str | os.PathLike, *, max_per_class: int | None = None) -> Task:
    """An evaluation task: ``{root}/{train,test}/{class}/*`` with images (``val/`` optional)."""
    task = read_task_folder(root, required=('train', 'test'), max_per_class=max_per_class)
    empty = [s for s in ('train', 'test') if len(task.splits[s]) == 0]
    if empty:
        raise TaskFolderError(f'task {task.root}: split(s) {empty} hold no images')
    return task


def cached_features(
    task: Task, extractor: FeatureExtractor, cache_dir: Path, **run_kwargs: Any
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, list[str]]], dict]:
    """``{split: (X, y, groups)}`` with ``extractor``, extracting into ``cache_dir`` what is not there yet.

    The cache folder is named by model spec (and seed for ``random:``) plus a hash of the weight
    identity (SHA-256 / hub revision / random seed) and the preprocessing/layer/TTA/precision, so
    changed weights or settings never mix with old features.
    """
    prov = extractor.provenance()
    keys = ('weights', 'preprocessing', 'layer', 'tta', 'precision')
    settings = json.dumps([prov.get(k) for k in keys], sort_keys=True, default=str)
    name = spec_slug(extractor.spec) + (f'-seed{extractor.seed}' if is_random(extractor.spec) else '')
    folder = cache_dir / f'{name}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}'
    labels = {storage_key(p): y for p, y in task.label_of().items()}  # keys as feature files store them
    out, failed = {}, {}
    for split_name, split in task.splits.items():
        path = folder / f'{split_name}.safetensors'
        ff = read_features(path) if path.exists() else None
        if ff is None or not {str(p) for p in split.paths} <= set(ff.paths) | set(ff.failed):
            extract_source(
                extractor, make_source([str(p) for p in split.paths], labels=False), path, **run_kwargs
            )
            ff = read_features(path)
        keep = [i for i, p in enumerate(ff.paths) if p in labels]
        X = ff.features[keep]
        y = np.asarray([labels[ff.paths[i]] for i in keep], dtype=np.int64)
        out[split_name] = (X, y, [group_id(ff.paths[i]) for i in keep])
        failed.update({p: r for p, r in ff.failed.items() if p in labels})
    return out, {'provenance': ff.provenance, 'failed': failed, 'cache': str(folder)}


def _linear_runs(
    spec: str,
    task: Task,
    seeds: list[int],
    cache: Path,
    extractor_kwargs: dict,
    run_kwargs: dict,
    linear_kwargs: dict,
    model_info: dict,
) -> list[dict[str, Any]]:
    """The linear protocol for one model over seeds: cached features, C tuned by grouped CV on
    train+val (the paper's), scored on test. A fixed-weight backbone is extracted once."""
    runs, extractor = [], None
    for seed in seeds:
        if is_random(spec) or extractor is None:
            extractor = FeatureExtractor(spec, seed=seed, **extractor_kwargs)
        feats, info = cached_features(task, extractor, cache, **run_kwargs)
        model_info.setdefault(
            spec,
            {
                'provenance': info['provenance'],
                'failed_images': info['failed'],
                'feature_cache': info['cache'],
            },
        )
        X_tr, y_tr, g_tr = feats['train']
        if task.has('val'):  # the paper tunes C on train+val
            X_va, y_va, g_va = feats['val']
            X_tr, y_tr, g_tr = np.concatenate([X_tr, X_va]), np.concatenate([y_tr, y_va]), g_tr + g_va
        X_te, y_te, _ = feats['test']
        res = fit_linear(
            X_tr,
            y_tr,
            g_tr,
            X_te,
            y_te,
            metric=task.metric,
            classifier=linear_kwargs['classifier'],
            Cs=linear_kwargs['Cs'],
            n_splits=linear_kwargs['cv_folds'],
            seed=seed,
            n_classes=task.n_classes,
        )
        # a fixed-weight backbone gives the same features for every seed: its spread is CV noise
        runs.append(
            {
                'model': spec,
                'mode': 'linear',
                'seed': seed,
                'classifier': linear_kwargs['classifier'],
                'independent': is_random(spec),
                **res,
            }
        )
        print(
            f'[linear] {spec} seed {seed}: {task.metric} {res["score"]:.4f} (C={res["C"]:g})', file=sys.stderr
        )
    return runs


def evaluate(
    task_root: str | os.PathLike,
    models: Sequence[str],
    *,
    modes: Sequence[str] = ('linear',),
    seeds: int | Sequence[int] = 5,
    out: str | os.PathLike = 'report',
    classifier: str = 'svm',
    Cs: Sequence[float] = C_GRID,
    cv_folds: int = 5,
    layer: str = 'pooled',
    tta: str = 'none',
    img_size: int | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    device: str = 'auto',
    precision: str = 'auto',
    max_per_class: int | None = None,
    finetune_cfg: FinetuneConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model in every mode over seeds; writes the report under ``out`` and returns it."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise InvalidOptionError(f'unknown mode(s) {bad}; choose from {MODES}')
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    task = load_task(task_root, max_per_class=max_per_class)
    out = Path(out)
    cache = out / 'cache'
    ft_cfg = finetune_cfg or FinetuneConfig(img_size=img_size, device=device, precision=precision)
    runs: list[dict[str, Any]] = []
    model_info: dict[str, Any] = {}
    extractor_kwargs = dict(layer=layer, tta=tta, img_size=img_size, device=device, precision=precision)
    run_kwargs = dict(batch_size=batch_size, num_workers=num_workers, progress=progress)

    for spec in models:
        if 'linear' in modes:
            linear_kwargs = dict(classifier=classifier, Cs=Cs, cv_folds=cv_folds)
            runs += _linear_runs(
                spec, task, seeds, cache, extractor_kwargs, run_kwargs, linear_kwargs, model_info
            )
        if 'finetune' in modes:
            for seed in seeds:
                res = finetune(spec, task, ft_cfg, seed=seed)
                runs.append({'model': spec, 'mode': 'finetune', 'seed': seed, 'independent': True, **res})
                print(
                    f'[finetune] {spec} seed {seed}: {task.metric} {res["score"]:.4f} '
                    f'(lr={res["lr"]:g}, epoch {res["epoch"]})',
                    file=sys.stderr,
                )

    result = {
        'task': task.name,
        'task_root': str(task.root),
        'metric': task.metric,
        'n_classes': task.n_classes,
        'class_names': task.class_names,
        'sizes': {k: len(v) for k, v in task.splits.items()},
        'models': list(models),
        'modes': list(modes),
        'seeds': seeds,
        'n_seeds': len(seeds),
        'settings': {
            'classifier': classifier,
            'Cs': list(Cs),
            'cv_folds': cv_folds,
            'layer': layer,
            'tta': tta,
            'img_size': img_size,
            'max_per_class': max_per_class,
        },
        'summary': summarize(runs, list(models), list(modes)),
        'significance_rule': SIGNIFICANCE_RULE,
        'runs': runs,
        'model_info': model_info,
        'versions': package_versions(),
        'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
    }
    result['files'] = {k: str(v) for k, v in write_report(result, out).items()}
    return result
