"""Evaluation report: ``results.json``, ``results.md`` (models side by side) and ``results.png``.

Scores are shown in percent as mean +- std over seeds. In the Markdown table a model whose
difference to the first (reference) model is significant by the paper's rule (more than 2x the
larger std) is marked ``▲`` (better) or ``▼`` (worse).

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


def markdown_table(result: dict[str, Any]) -> str:
    models, summary = result['models'], result['summary']
    metric = _METRIC_NAMES.get(result['metric'], result['metric'])
    lines = [
        f'# {result["task"]}: {metric} (%), mean ± std over {result["n_seeds"]} seed(s)',
        '',
        '| mode | ' + ' | '.join(f'`{m}`' for m in models) + ' |',
        '|---|' + '---|' * len(models),
    ]
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
            mark = ''
            if s.get('significant_vs_first'):
                mark = ' ▲' if s['diff_vs_first'] > 0 else ' ▼'
            elif 'significant_vs_first' in s and s['significant_vs_first'] is None:
                mark, any_untested = ' ○', True
            cells.append(f'{100 * s["mean"]:.2f} ± {100 * s["std"]:.2f}{"†" if fixed else ""}{mark}')
        lines.append(f'| {mode} | ' + ' | '.join(cells) + ' |')
    lines += [
        '',
        f'- ▲/▼: significantly better/worse than `{models[0]}` (|difference| > 2 × the larger std '
        'over independently initialised/trained models).',
    ]
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
    lines += [
        '',
        f'Train {result["sizes"].get("train", 0)}, val {result["sizes"].get("val", 0)}, '
        f'test {result["sizes"].get("test", 0)} images; {result["n_classes"]} classes.',
    ]
    return '\n'.join(lines) + '\n'


def plot(result: dict[str, Any], path: str | os.PathLike) -> None:
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependencyError('the report plot needs matplotlib: pip install mtdp-hub[eval]') from e
    matplotlib.use('Agg', force=False)
    import matplotlib.pyplot as plt

    models, summary = result['models'], result['summary']
    modes = list(summary)
    width = 0.8 / max(1, len(models))
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(modes) * max(1, len(models)) / 2, 4))
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
            ax.scatter([x] * len(s['scores']), [100 * v for v in s['scores']], s=8, color='k', zorder=3)
        ax.bar(xs, means, width=width * 0.9, yerr=stds, capsize=3, label=m)
    ax.set_xticks(range(len(modes)), modes)
    ax.set_ylabel(f'{_METRIC_NAMES.get(result["metric"], result["metric"])} (%)')
    ax.set_title(result['task'])
    ax.legend(fontsize='small', loc='lower right')
    fig.tight_layout()
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and ``results.png`` under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {'json': out / 'results.json', 'markdown': out / 'results.md', 'plot': out / 'results.png'}
    atomic_write_text(paths['json'], json.dumps(result, indent=1, default=str))
    atomic_write_text(paths['markdown'], markdown_table(result))
    plot(result, paths['plot'])
    return paths
