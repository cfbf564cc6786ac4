"""Evaluation report: ``results.json``, ``results.md`` (models side by side) and ``results.png``.

Scores are shown in percent as mean +- std over seeds. In the Markdown table a model whose
difference to the first (reference) model is significant by the paper's rule (more than 2x the
larger std) is marked ``▲`` (better) or ``▼`` (worse); the plot carries the same marks.

Beside the task metric: balanced accuracy, per-class precision / recall / F1 (means over seeds)
with support, and the confusion matrix summed over seeds. What could mislead a reader is said in
a "Read first" list (:func:`report_warnings`), in results.md and results.json alike: CV folds
that fell back to ungrouped, fine-tuning without a val split, a C chosen at the edge of its grid,
models given different preprocessing, models that failed.

Each (model, mode) records where its std comes from (``std_source``): ``independent`` (separately
initialised/trained models: ``random:`` backbones, fine-tuning) or ``cv_shuffles`` (one
fixed-weight backbone in linear mode: features computed once, the seeds only reshuffle the CV
folds). A ``cv_shuffles`` std is marked ``†`` in the table and counts as 0 for significance, the
paper's convention for its deterministic ImageNet FE; two ``cv_shuffles`` sides are not tested
(``significant_vs_first`` is ``None``, marked ``○``). See :data:`SIGNIFICANCE_RULE`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_path, atomic_write_text
from ..errors import MissingDependencyError
from .metrics import mean_std, significant

_METRIC_NAMES = {'accuracy': 'accuracy', 'roc_auc': 'ROC AUC'}
STD_SOURCES = {
    'independent': 'std over independently initialised/trained models',
    'cv_shuffles': 'std over CV shuffles only, one fixed backbone',
}
SIGNIFICANCE_RULE = (
    "significant when |difference| > 2 x the larger std (the paper's rule), counting only stds over "
    'independently initialised/trained models; the std of a fixed backbone in linear mode (CV shuffles only, '
    "one fixed backbone) is taken as 0, the paper's convention for deterministic ImageNet FE; two fixed "
    'backbones are not tested against each other (significant_vs_first = null)'
)


def summarize(runs: list[dict[str, Any]], models: list[str], modes: list[str]) -> dict[str, dict[str, Any]]:
    """``{mode: {model: {mean, std, n, scores, std_source, significant_vs_first}}}`` from per-seed runs.

    A run's ``independent`` (default True) says whether its seeds give independent models;
    ``std_source`` is ``'independent'`` when all runs of a (model, mode) are, else ``'cv_shuffles'``.
    ``significant_vs_first`` is True/False, or None when both sides are ``cv_shuffles``.
    """
    out: dict[str, dict[str, Any]] = {}
    for mode in modes:
        per_model = {}
        for m in models:
            sel = [r for r in runs if r['mode'] == mode and r['model'] == m]
            if sel:
                scores = [r['score'] for r in sel]
                mean, std = mean_std(scores)
                source = 'independent' if all(r.get('independent', True) for r in sel) else 'cv_shuffles'
                per_model[m] = {
                    'mean': mean,
                    'std': std,
                    'n': len(scores),
                    'scores': scores,
                    'std_source': source,
                    **_details_summary([r['details'] for r in sel if 'details' in r]),
                }
        ref = per_model.get(models[0])
        for m, s in per_model.items():
            if ref is not None and m != models[0]:
                s['significant_vs_first'] = significant(
                    s['scores'],
                    ref['scores'],
                    a_independent=s['std_source'] == 'independent',
                    b_independent=ref['std_source'] == 'independent',
                )
                s['diff_vs_first'] = s['mean'] - ref['mean']
        out[mode] = per_model
    return out


def _details_summary(details: list[dict[str, Any]]) -> dict[str, Any]:
    """Balanced accuracy / accuracy (mean, std), per-class metrics (means) and the confusion matrix
    (summed) over the seeds' test-set details."""
    if not details:
        return {}
    out: dict[str, Any] = {}
    for key in ('balanced_accuracy', 'accuracy'):
        mean, std = mean_std([d[key] for d in details])
        out[key] = {'mean': mean, 'std': std, 'scores': [d[key] for d in details]}
    classes = list(details[0]['per_class'])
    out['per_class'] = {
        c: {
            **{
                k: float(np.mean([d['per_class'][c][k] for d in details]))
                for k in ('precision', 'recall', 'f1')
            },
            'support': details[0]['per_class'][c]['support'],
        }
        for c in classes
    }
    out['confusion_matrix'] = np.sum([d['confusion_matrix'] for d in details], axis=0).tolist()
    return out


def _fmt(v: float) -> str:
    return f'{v:g}'


def _preprocessing_warnings(result: dict[str, Any]) -> list[str]:
    configs = result.get('preprocessing') or {}
    names = [m for m in result['models'] if m in configs]
    if len(names) < 2:
        return []
    ref, out = names[0], []
    for m in names[1:]:
        diff = [
            f'{k} {configs[m].get(k)} (vs {configs[ref].get(k)})'
            for k in sorted(set(configs[m]) | set(configs[ref]))
            if configs[m].get(k) != configs[ref].get(k)
        ]
        if diff:
            out.append(f'`{m}` is given a different preprocessing than `{ref}`: ' + ', '.join(diff))
    if out:
        out.append(
            'each model gets its own eval preprocessing (its data config), so differences in scores '
            'include differences in resizing, cropping or normalisation'
        )
    return out


def report_warnings(result: dict[str, Any]) -> list[str]:
    """What a reader must know before trusting the table, one sentence each."""
    out = [
        f'`{m}` failed and is not (fully) in the table: {why}'
        for m, why in result.get('failed_models', {}).items()
    ]
    runs = result.get('runs', [])
    linear = [r for r in runs if r['mode'] == 'linear']
    ungrouped = sorted({r['model'] for r in linear if r.get('grouped') is False}, key=result['models'].index)
    if ungrouped:
        out.append(
            'linear: the cross-validation that tunes C is UNGROUPED for '
            + ', '.join(f'`{m}`' for m in ungrouped)
            + ': the file names give a single group id (prefix before the first "_"), so images of one '
            'patient or slide can sit on both sides of a fold and C is tuned on optimistic CV scores'
        )
    for m in result['models']:
        for edge in ('smallest', 'largest'):
            hit = [r for r in linear if r['model'] == m and r.get('C_at_edge') == edge]
            if hit:
                out.append(
                    f'linear, `{m}`: the chosen C is the {edge} value of the grid (C={_fmt(hit[0]["C"])}) in '
                    f'{len(hit)} of {sum(r["model"] == m for r in linear)} seed(s): the best C may lie '
                    'beyond the grid; widen it (--cs)'
                )
    fine = [r for r in runs if r['mode'] == 'finetune']
    no_val = [r for r in fine if r.get('selection') == 'last epoch (no val split)']
    if no_val:
        cfg = no_val[0].get('config', {})
        out.append(
            f'finetune: no val split: one learning rate ({_fmt(no_val[0]["lr"])}) trained for '
            f'{cfg.get("epochs", no_val[0].get("epoch"))} epoch(s), its last epoch scored on test; neither the '
            'learning rate nor the epoch was selected'
        )
    undefined = [r for r in fine if r.get('selection') == 'last epoch (val score undefined)']
    for m in sorted({r['model'] for r in undefined}, key=result['models'].index):
        n = sum(r['model'] == m for r in undefined)
        out.append(
            f'finetune, `{m}`: the val score was never defined (e.g. a single class in val) in {n} seed(s): '
            'the last epoch was scored'
        )
    return out + _preprocessing_warnings(result)


def _mark(s: dict[str, Any]) -> str:
    """The significance mark of one (model, mode) against the reference: ▲, ▼, ○ or nothing."""
    if s.get('significant_vs_first'):
        return '▲' if s['diff_vs_first'] > 0 else '▼'
    if 'significant_vs_first' in s and s['significant_vs_first'] is None:
        return '○'
    return ''


def _score_table(result: dict[str, Any]) -> tuple[list[str], bool, bool]:
    models, summary = result['models'], result['summary']
    lines = ['| mode | ' + ' | '.join(f'`{m}`' for m in models) + ' |', '|---|' + '---|' * len(models)]
    any_fixed = any_untested = False
    for mode, per_model in summary.items():
        cells = []
        for m in models:
            s = per_model.get(m)
            if s is None:
                cells.append('–')
                continue
            fixed = s.get('std_source') == 'cv_shuffles'
            any_fixed |= fixed
            mark = _mark(s)
            any_untested |= mark == '○'
            cells.append(
                f'{100 * s["mean"]:.2f} ± {100 * s["std"]:.2f}{"†" if fixed else ""}{" " + mark if mark else ""}'
            )
        lines.append(f'| {mode} | ' + ' | '.join(cells) + ' |')
    return lines, any_fixed, any_untested


def _side_table(result: dict[str, Any], key: str) -> list[str]:
    """Rows ``mode`` x models of the mean ± std of ``key`` (balanced accuracy, accuracy) over seeds."""
    models, summary = result['models'], result['summary']
    rows = []
    for mode, per_model in summary.items():
        cells = [
            f'{100 * per_model[m][key]["mean"]:.2f} ± {100 * per_model[m][key]["std"]:.2f}'
            if key in per_model.get(m, {})
            else '–'
            for m in models
        ]
        rows.append(f'| {mode} | ' + ' | '.join(cells) + ' |')
    if not any(key in per_model.get(m, {}) for per_model in summary.values() for m in models):
        return []
    return ['| mode | ' + ' | '.join(f'`{m}`' for m in models) + ' |', '|---|' + '---|' * len(models), *rows]


def _per_class_section(result: dict[str, Any]) -> list[str]:
    lines = []
    for mode, per_model in result['summary'].items():
        for m in result['models']:
            s = per_model.get(m, {})
            if 'per_class' not in s:
                continue
            classes = list(s['per_class'])
            lines += [
                f'### {mode}, `{m}` ({s["n"]} seed(s))',
                '',
                '| class | precision | recall | F1 | support |',
                '|---|---|---|---|---|',
            ]
            for c, v in s['per_class'].items():
                lines.append(
                    f'| {c} | {100 * v["precision"]:.1f} | {100 * v["recall"]:.1f} | {100 * v["f1"]:.1f} | {v["support"]} |'
                )
            lines += [
                '',
                f'Confusion matrix, summed over {s["n"]} seed(s) (rows: true class, columns: predicted):',
                '',
                '| true / predicted | ' + ' | '.join(classes) + ' |',
                '|---|' + '---|' * len(classes),
            ]
            for c, row in zip(classes, s['confusion_matrix']):
                lines.append(f'| {c} | ' + ' | '.join(str(v) for v in row) + ' |')
            lines.append('')
    if lines:
        lines = ['## Per-class results on test (precision, recall, F1 in %: means over seeds)', '', *lines]
    return lines


def markdown_table(result: dict[str, Any]) -> str:
    models = result['models']
    metric = _METRIC_NAMES.get(result['metric'], result['metric'])
    table, any_fixed, any_untested = _score_table(result)
    lines = [f'# {result["task"]}: {metric} (%), mean ± std over {result["n_seeds"]} seed(s)', '', *table, '']
    warnings = result.get('warnings', [])
    if warnings:
        lines += ['**Read first:**', '', *[f'- {w}' for w in warnings], '']
    lines.append(
        f'- ▲/▼: significantly better/worse than `{models[0]}` (|difference| > 2 × the larger std '
        'over independently initialised/trained models).'
    )
    if any_fixed:
        lines.append(
            '- †: std over CV shuffles only, one fixed backbone (features computed once; the seeds only '
            "reshuffle the CV folds). For significance it counts as 0, the paper's convention for its "
            "deterministic ImageNet FE, so the other side's std sets the threshold."
        )
    if any_untested:
        lines.append(
            f'- ○: not tested against `{models[0]}`: both are one fixed backbone each, so neither std '
            'measures model variance and no significance is claimed.'
        )
    specs, weights = result.get('model_specs', {}), result.get('weights', {})
    named = [m for m in models if specs.get(m, m) != m or m in weights]
    if named:
        lines.append(
            '- models: '
            + '; '.join(
                f'`{m}` = `{specs.get(m, m)}`' + (f' with weights `{weights[m]}`' if m in weights else '')
                for m in named
            )
            + '.'
        )
    sizes = result['sizes']
    split = result.get('settings', {}).get('test_split', 'test')
    lines += [
        '',
        f'Train {sizes.get("train", 0)}, val {sizes.get("val", 0)}, test {sizes.get("test", 0)} images'
        + (f' (the test set is the {split!r} split folder)' if split != 'test' else '')
        + f'; {result["n_classes"]} classes.',
    ]
    for key, title in (('balanced_accuracy', 'Balanced accuracy'), ('accuracy', 'Accuracy')):
        if key == 'accuracy' and result['metric'] == 'accuracy':
            continue
        side = _side_table(result, key)
        if side:
            lines += ['', f'## {title} (%), mean ± std over seeds', '', *side]
    per_class = _per_class_section(result)
    if per_class:
        lines += ['', *per_class]
    return '\n'.join(lines).rstrip('\n') + '\n'


def chance_level(result: dict[str, Any]) -> tuple[float, str] | None:
    """The score of a model that knows nothing, in the task metric: 0.5 for ROC AUC; for accuracy
    the share of the most frequent class in the test set (what predicting it always scores)."""
    if result['metric'] == 'roc_auc':
        return 0.5, 'chance (AUC 0.5)'
    counts = result.get('test_class_counts')
    if counts and sum(counts):
        return max(counts) / sum(counts), 'chance: always the most frequent class'
    return None


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write :func:`figure` to ``path`` (PNG)."""
    fig = figure(result)
    import matplotlib.pyplot as plt

    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches='tight')
    plt.close(fig)


def figure(result: dict[str, Any]):
    """Bars (mean ± std), per-seed points, the table's significance marks, the chance level and a
    legend outside the axes, models under their short names. A matplotlib figure (Agg backend)."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError('the report plot needs matplotlib: pip install mtdp-hub[eval]') from e
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    models, summary = result['models'], result['summary']
    modes = list(summary)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(2.5 + 1.2 * len(modes) * max(1, len(models)) / 2, 4))
    top = 0.0
    for j, m in enumerate(models):
        xs, means, stds = [], [], []
        for i, mode in enumerate(modes):
            s = summary[mode].get(m)
            if s is None:
                continue
            x = i + (j - (len(models) - 1) / 2) * width
            xs.append(x)
            means.append(100 * s['mean'])
            stds.append(100 * s['std'])
            points = [100 * v for v in s['scores']]
            ax.scatter([x] * len(points), points, s=10, color='k', zorder=3, label='_nolegend_')
            mark = _mark(s)
            high = max([means[-1] + stds[-1], *points])
            top = max(top, high)
            if mark:
                ax.annotate(
                    mark, (x, high), xytext=(0, 3), textcoords='offset points', ha='center', fontsize=9
                )
        ax.bar(xs, means, width=width * 0.9, yerr=stds, capsize=3, label=m)
    chance = chance_level(result)
    if chance is not None:
        ax.axhline(100 * chance[0], color='0.4', linestyle='--', linewidth=1, label=chance[1])
    ax.scatter([], [], s=10, color='k', label='one seed')
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylim(0, max(100.0, top + 6))
    ax.set_ylabel(f'{_METRIC_NAMES.get(result["metric"], result["metric"])} (%)')
    ax.set_title(f'{result["task"]} (▲/▼ vs {models[0]}: significant)', fontsize='medium')
    ax.legend(fontsize='small', loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return fig


def write_report(
    result: dict[str, Any], out_dir: str | os.PathLike, *, with_plot: bool = True
) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and (``with_plot``) ``results.png`` under ``out_dir``.

    Without the plot, a ``results.png`` left from an earlier report is removed, so the folder never
    shows a plot that disagrees with its table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {'json': out / 'results.json', 'markdown': out / 'results.md', 'plot': out / 'results.png'}
    atomic_write_text(paths['json'], json.dumps(result, indent=1, default=str))
    atomic_write_text(paths['markdown'], markdown_table(result))
    if with_plot:
        plot(result, paths['plot'])
    else:
        paths.pop('plot').unlink(missing_ok=True)
    return paths
