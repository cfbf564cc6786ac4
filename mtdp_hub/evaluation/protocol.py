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

Models are given as specs or ``NAME=SPEC`` (the short name of the table and plot), each with an
optional local weight file. All of them are loaded once before the first extraction, so a model
that cannot load stops the run before any work, named. A model that fails later is recorded in
the report (``failed_models``) and the others still run; the report is rewritten after each model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import (
    IncompleteEvaluationError,
    InvalidOptionError,
    MissingDependencyError,
    ModelLoadError,
    MtdpError,
    TaskFolderError,
)
from ..features import FeatureExtractor, extract_source, make_source, read_features
from ..features.sources import storage_key
from ..features.specs import data_config, is_random, load_backbone, package_versions, spec_slug
from ..tasks import Task, group_id, read_task_folder
from .finetune import FinetuneConfig, check_plan, finetune
from .linear import C_GRID, CLASSIFIERS, fit_linear
from .report import SIGNIFICANCE_RULE, report_warnings, summarize, write_report

__all__ = ['MODES', 'evaluate', 'load_task', 'cached_features', 'parse_models', 'check_models']

MODES = ('linear', 'finetune')
_ALIAS = re.compile(r'^([A-Za-z0-9][A-Za-z0-9_.+-]*)=(.+)$')


def load_task(root: str | os.PathLike, *, max_per_class: int | None = None, test_split: str = 'test') -> Task:
    """An evaluation task: ``{root}/{train,test}/{class}/*`` with images (``val/`` optional).

    ``test_split`` names the split folder scored as the test set (``'val'`` for data that has
    train/val only); the task then has splits ``train`` and ``test`` (no val).
    """
    if test_split not in ('test', 'val'):
        raise InvalidOptionError(f"the test split must be 'test' or 'val', not {test_split!r}")
    task = read_task_folder(root, required=('train',), max_per_class=max_per_class)
    if test_split not in task.splits:
        raise TaskFolderError(
            f'task {task.root} has no {test_split!r} split folder to score on (split folders found: '
            f'{", ".join(task.splits)}); choose the test split with --test-split'
        )
    if test_split != 'test':
        task.splits = {'train': task.splits['train'], 'test': task.splits[test_split]}
    empty = [s for s in ('train', 'test') if len(task.splits[s]) == 0]
    if empty:
        raise TaskFolderError(f'task {task.root}: split(s) {empty} hold no images')
    return task


def short_name(spec: str) -> str:
    """What a table shows for an unnamed model: ``hf-hub:ORG/NAME`` -> NAME, ``local-dir:PATH`` ->
    the folder's name, anything else unchanged."""
    if spec.startswith('hf-hub:'):
        return spec.rsplit('/', 1)[-1].split('@', 1)[0]
    if spec.startswith('local-dir:'):
        return Path(spec[len('local-dir:') :].rstrip('/\\')).name or spec
    return spec


def parse_models(models: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``{name: spec}`` in the order given, from ``NAME=SPEC`` / ``SPEC`` strings (or a mapping).

    NAME (letters, digits, ``_.+-``) is what the table and the plot show; an unnamed model shows
    :func:`short_name` of its spec, or its whole spec where short names would collide.
    """
    if isinstance(models, Mapping):
        pairs = [(str(k), str(v)) for k, v in models.items()]
    else:
        pairs = []
        for item in models:
            m = _ALIAS.match(item)
            pairs.append((m.group(1), m.group(2)) if m else (None, item))
    if not pairs:
        raise InvalidOptionError('no model to evaluate')
    shorts = [short_name(spec) for name, spec in pairs if name is None]
    out: dict[str, str] = {}
    for name, spec in pairs:
        if name is None:
            name = short_name(spec) if shorts.count(short_name(spec)) == 1 else spec
        if name in out:
            raise InvalidOptionError(f'model name {name!r} given twice (for {out[name]} and {spec})')
        out[name] = spec
    return out


def _weights_by_name(weights: Mapping[str, str] | None, specs: dict[str, str]) -> dict[str, str]:
    """``{name: file}`` from weights keyed by model name, by spec, or by ``''`` (one model only)."""
    out: dict[str, str] = {}
    for key, file in (weights or {}).items():
        if key in ('', None):
            if len(specs) != 1:
                raise InvalidOptionError(
                    f'a weight file without a model name ({file}) needs a single model; write NAME=FILE, '
                    f'NAME one of {", ".join(specs)}'
                )
            name = next(iter(specs))
        elif key in specs:
            name = key
        else:
            name = next((n for n, spec in specs.items() if spec == key), None)
            if name is None:
                raise InvalidOptionError(
                    f'weights for {key!r}: no such model; the models are {", ".join(specs)}'
                )
        out[name] = str(file)
    return out


def check_models(
    specs: dict[str, str], weights: dict[str, str], *, seed: int, img_size: int | None, keep: bool
) -> tuple[dict[str, dict], dict[str, Any]]:
    """Load every model once, before any work: ``({name: data config}, {name: loaded model})``.

    Raises one error naming every model that cannot be loaded and why. ``keep``: return the
    fixed-weight models (to extract with) instead of dropping them.
    """
    configs, loaded, failures = {}, {}, []
    for name, spec in specs.items():
        file = weights.get(name)
        try:
            model = load_backbone(spec, seed=seed, weights=file)
        except Exception as e:  # timm, huggingface_hub and torch raise many kinds: report each, named
            where = spec + (f' with weights {file}' if file else '')
            detail = str(e).strip().replace('\n', '\n    ')
            failures.append(f'- {name} ({where}): {type(e).__name__}: {detail}')
            continue
        configs[name] = data_config(model, img_size)
        if keep and not is_random(spec):
            loaded[name] = model
    if failures:
        raise ModelLoadError(
            f'{len(failures)} of {len(specs)} model(s) cannot be loaded, nothing was run:\n'
            + '\n'.join(failures)
            + '\n(a local weight file per model: --weights NAME=FILE, NAME as given in --models)'
        )
    return configs, loaded


def cached_features(
    task: Task,
    extractor: FeatureExtractor,
    cache_dir: Path,
    *,
    folders: Mapping[str, str] | None = None,
    **run_kwargs: Any,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, list[str]]], dict]:
    """``{split: (X, y, groups)}`` with ``extractor``, extracting into ``cache_dir`` what is not there yet.

    The cache folder is named by model spec (and seed for ``random:``) plus a hash of the weight
    identity (SHA-256 / hub revision / random seed) and the preprocessing/layer/TTA/precision, so
    changed weights or settings never mix with old features. Each split's file is named by its
    folder (``folders``: split -> folder name, default the split's own name) and only the split's
    own images are read back from it.
    """
    prov = extractor.provenance()
    keys = ('weights', 'preprocessing', 'layer', 'tta', 'precision')
    settings = json.dumps([prov.get(k) for k in keys], sort_keys=True, default=str)
    name = spec_slug(extractor.spec) + (f'-seed{extractor.seed}' if is_random(extractor.spec) else '')
    folder = cache_dir / f'{name}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}'
    labels = {storage_key(p): y for p, y in task.label_of().items()}  # keys as feature files store them
    out, failed = {}, {}
    for split_name, split in task.splits.items():
        if len(split) == 0:  # an empty split folder (e.g. val/ with no images): nothing to extract
            continue
        path = folder / f'{(folders or {}).get(split_name, split_name)}.safetensors'
        wanted = {storage_key(str(p)) for p in split.paths}
        ff = read_features(path) if path.exists() else None
        if ff is None or not wanted <= set(ff.paths) | set(ff.failed):
            extract_source(
                extractor, make_source([str(p) for p in split.paths], labels=False), path, **run_kwargs
            )
            ff = read_features(path)
        keep = [i for i, p in enumerate(ff.paths) if p in wanted]
        X = ff.features[keep]
        y = np.asarray([labels[ff.paths[i]] for i in keep], dtype=np.int64)
        out[split_name] = (X, y, [group_id(ff.paths[i]) for i in keep])
        failed.update({p: r for p, r in ff.failed.items() if p in wanted})
    return out, {'provenance': ff.provenance, 'failed': failed, 'cache': str(folder)}


def _linear_runs(name: str, spec: str, ctx: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """The linear protocol for one model over seeds, appended to ``runs`` as each seed ends: cached
    features, C tuned by grouped CV on train+val (the paper's), scored on test. A fixed-weight
    backbone is extracted once (with the model loaded by the first check, when there is one)."""
    task, lin = ctx['task'], ctx['linear']
    extractor = None
    for seed in ctx['seeds']:
        if is_random(spec) or extractor is None:
            extractor = FeatureExtractor(
                spec,
                seed=seed,
                model=ctx['loaded'].pop(name, None),
                weights=ctx['weights'].get(name),
                **ctx['extractor_kwargs'],
            )
        feats, info = cached_features(
            task, extractor, ctx['cache'], folders=ctx['folders'], **ctx['run_kwargs']
        )
        ctx['model_info'][name].setdefault('provenance', info['provenance'])
        ctx['model_info'][name].setdefault('failed_images', info['failed'])
        ctx['model_info'][name].setdefault('feature_cache', info['cache'])
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
            classifier=lin['classifier'],
            Cs=lin['Cs'],
            n_splits=lin['cv_folds'],
            seed=seed,
            n_classes=task.n_classes,
            class_names=task.class_names,
        )
        # a fixed-weight backbone gives the same features for every seed: its spread is CV noise
        runs.append(
            {
                'model': name,
                'spec': spec,
                'mode': 'linear',
                'seed': seed,
                'classifier': lin['classifier'],
                'independent': is_random(spec),
                **res,
            }
        )
        notes = ([] if res['grouped'] else ['UNGROUPED folds']) + (
            [f"C at the grid's {res['C_at_edge']} value"] if res['C_at_edge'] else []
        )
        print(
            f'[linear] {name} seed {seed}: {task.metric} {res["score"]:.4f}, balanced accuracy '
            f'{res["details"]["balanced_accuracy"]:.4f} (C={res["C"]:g}{"; " if notes else ""}{"; ".join(notes)})',
            file=sys.stderr,
        )


def _finetune_runs(name: str, spec: str, ctx: dict[str, Any], runs: list[dict[str, Any]]) -> None:
    """Fine-tuning over seeds, appended to ``runs`` as each seed ends."""
    task = ctx['task']
    for seed in ctx['seeds']:
        res = finetune(spec, task, ctx['finetune_cfg'], seed=seed, weights=ctx['weights'].get(name))
        runs.append(
            {'model': name, 'spec': spec, 'mode': 'finetune', 'seed': seed, 'independent': True, **res}
        )
        print(
            f'[finetune] {name} seed {seed}: {task.metric} {res["score"]:.4f}, balanced accuracy '
            f'{res["details"]["balanced_accuracy"]:.4f} (lr={res["lr"]:g}, epoch {res["epoch"]}, {res["selection"]})',
            file=sys.stderr,
        )


def _failure(name: str, error: BaseException) -> str:
    """One line for the report; a bug (not an :class:`MtdpError`) also prints its traceback."""
    if not isinstance(error, MtdpError):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    return f'{type(error).__name__}: {" ".join(str(error).split())}'


def evaluate(
    task_root: str | os.PathLike,
    models: Sequence[str] | Mapping[str, str],
    *,
    modes: Sequence[str] = ('linear',),
    seeds: int | Sequence[int] = 5,
    out: str | os.PathLike = 'report',
    weights: Mapping[str, str] | None = None,
    test_split: str = 'test',
    classifier: str = 'svm',
    Cs: Sequence[float] = C_GRID,
    cv_folds: int = 5,
    layer: str = 'pooled',
    tta: str = 'none',
    img_size: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    device: str = 'auto',
    precision: str = 'auto',
    max_per_class: int | None = None,
    finetune_cfg: FinetuneConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate every model in every mode over seeds; writes the report under ``out`` and returns it.

    ``models``: specs or ``NAME=SPEC`` strings, or a ``{name: spec}`` mapping (:func:`parse_models`).
    ``weights``: ``{name or spec: local weight file}`` (key ``''``: the only model).
    ``test_split``: the split folder scored as the test set (see :func:`load_task`).
    ``batch_size`` / ``num_workers``: of the extraction, ``None`` for the device's defaults.
    Everything that can be checked is checked before any work (options, task folder, fine-tuning
    plan, every model loads). A model that fails later is recorded in the report and the others
    still run; the error then raised names it, after the report is written. results.json and
    results.md are rewritten after each model, results.png once all have run.
    """
    ctx = _prepare(
        task_root,
        models,
        modes=modes,
        seeds=seeds,
        weights=weights,
        test_split=test_split,
        classifier=classifier,
        Cs=Cs,
        cv_folds=cv_folds,
        max_per_class=max_per_class,
        img_size=img_size,
        device=device,
        precision=precision,
        finetune_cfg=finetune_cfg,
    )
    ctx.update(
        cache=Path(out) / 'cache',
        extractor_kwargs=dict(layer=layer, tta=tta, img_size=img_size, device=device, precision=precision),
        run_kwargs=dict(batch_size=batch_size, num_workers=num_workers, progress=progress),
        settings={
            'classifier': classifier,
            'Cs': [float(c) for c in Cs],
            'cv_folds': cv_folds,
            'layer': layer,
            'tta': tta,
            'img_size': img_size,
            'max_per_class': max_per_class,
            'test_split': test_split,
        },
    )
    return _run_models(ctx, modes, out)


def _run_models(ctx: dict[str, Any], modes: Sequence[str], out: str | os.PathLike) -> dict[str, Any]:
    """Run each model in turn; one that fails is recorded and the others go on. The report is
    rewritten after each model; the error raised at the end names every model that failed."""
    runs: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for name, spec in ctx['specs'].items():
        try:
            if 'linear' in modes:
                _linear_runs(name, spec, ctx, runs)
            if 'finetune' in modes:
                _finetune_runs(name, spec, ctx, runs)
        except Exception as e:
            failed[name] = _failure(name, e)
            print(f'[evaluate] {name} failed, the other models go on: {failed[name]}', file=sys.stderr)
        except KeyboardInterrupt:
            failed[name] = 'interrupted'
            result = _result(ctx, runs, failed)
            write_report(result, out)
            raise
        ctx['loaded'].pop(name, None)
        result = _result(ctx, runs, failed)
        last = name == list(ctx['specs'])[-1]  # the plot once, at the end: the tables after each model
        result['files'] = {k: str(v) for k, v in write_report(result, out, with_plot=last).items()}
    if failed:
        raise IncompleteEvaluationError(
            f'{len(failed)} of {len(ctx["specs"])} model(s) failed ('
            + '; '.join(f'{n}: {r}' for n, r in failed.items())
            + f'); the report of what finished is in {result["files"]["markdown"]}'
        )
    return result


def _prepare(
    task_root,
    models,
    *,
    modes,
    seeds,
    weights,
    test_split,
    classifier,
    Cs,
    cv_folds,
    max_per_class,
    img_size,
    device,
    precision,
    finetune_cfg,
) -> dict[str, Any]:
    """Every check that needs no extraction, then every model loaded once: the run's context."""
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise InvalidOptionError(f'unknown mode(s) {bad or list(modes)}; choose from {MODES}')
    if classifier not in CLASSIFIERS:
        raise InvalidOptionError(f'classifier must be one of {CLASSIFIERS}, not {classifier!r}')
    if not Cs or any(not c > 0 for c in Cs):
        raise InvalidOptionError(f'the C grid must hold positive values, got {list(Cs)}')
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise InvalidOptionError('at least one seed is needed')
    _require_report_packages()
    specs = parse_models(models)
    weights = _weights_by_name(weights, specs)
    task = load_task(task_root, max_per_class=max_per_class, test_split=test_split)
    ft_cfg = finetune_cfg or FinetuneConfig(img_size=img_size, device=device, precision=precision)
    if 'finetune' in modes:
        check_plan(task, ft_cfg)
    configs, loaded = check_models(specs, weights, seed=seeds[0], img_size=img_size, keep='linear' in modes)
    return {
        'task': task,
        'modes': list(modes),
        'seeds': seeds,
        'specs': specs,
        'weights': weights,
        'folders': {'train': 'train', 'val': 'val', 'test': test_split},
        'linear': dict(classifier=classifier, Cs=tuple(float(c) for c in Cs), cv_folds=cv_folds),
        'finetune_cfg': ft_cfg,
        'preprocessing': configs,
        'loaded': loaded,
        'model_info': {
            name: {'spec': spec, 'weights_file': weights.get(name), 'preprocessing': configs[name]}
            for name, spec in specs.items()
        },
    }


def _require_report_packages() -> None:
    """scikit-learn (metrics, linear) and matplotlib (the plot), checked before hours of work."""
    for module in ('sklearn', 'matplotlib'):
        try:
            __import__(module)
        except ImportError as e:
            raise MissingDependencyError(f'mtdp evaluate needs {module}: pip install mtdp-hub[eval]') from e


def _result(ctx: dict[str, Any], runs: list[dict[str, Any]], failed: dict[str, str]) -> dict[str, Any]:
    task, names = ctx['task'], list(ctx['specs'])
    result = {
        'task': task.name,
        'task_root': str(task.root),
        'metric': task.metric,
        'n_classes': task.n_classes,
        'class_names': task.class_names,
        'sizes': {k: len(v) for k, v in task.splits.items()},
        'test_class_counts': np.bincount(task.splits['test'].labels, minlength=task.n_classes).tolist(),
        'models': names,
        'model_specs': dict(ctx['specs']),
        'weights': dict(ctx['weights']),
        'modes': ctx['modes'],
        'seeds': ctx['seeds'],
        'n_seeds': len(ctx['seeds']),
        'settings': ctx['settings'],
        'summary': summarize(runs, names, ctx['modes']),
        'significance_rule': SIGNIFICANCE_RULE,
        'failed_models': dict(failed),
        'preprocessing': ctx['preprocessing'],
        'runs': list(runs),
        'model_info': ctx['model_info'],
        'versions': package_versions(),
        'created': datetime.now(timezone.utc).isoformat(timespec='seconds'),
    }
    result['warnings'] = report_warnings(result)
    return result
