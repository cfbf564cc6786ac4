"""mtdp evaluate: task folders, grouped CV, metrics, linear and fine-tune protocols, the report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mtdp_hub.cli.evaluate import add_cli
from mtdp_hub.errors import TaskFolderError
from mtdp_hub.evaluation import evaluate, load_task
from mtdp_hub.evaluation import protocol as evaluate_mod
from mtdp_hub.evaluation.finetune import FinetuneConfig, finetune, finetune_lr
from mtdp_hub.evaluation.linear import C_GRID, fit_linear, grouped_folds
from mtdp_hub.evaluation.metrics import accuracy, mean_std, roc_auc, score, significant
from mtdp_hub.evaluation.report import markdown_table, summarize
from mtdp_hub.tasks import group_id

SHARED = Path(__file__).resolve().parents[2].parent / 'shared' / 'data'
TINY = 'random:test_resnet'  # 0.4 M parameters


def make_task(root: Path, n_classes=2, per_split=(8, 4, 4), n_groups=4, size=20, seed=0) -> Path:
    """Images whose brightness depends on the class; file names ``g{k}_{i}.png`` (group ``g{k}``)."""
    rng = np.random.default_rng(seed)
    for split, n in zip(('train', 'val', 'test'), per_split):
        for c in range(n_classes):
            d = root / split / f'class{c}'
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                base = 40 + 160 * c // max(1, n_classes - 1)
                a = np.clip(rng.normal(base, 25, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(a).save(d / f'{split}{i % n_groups}_{c}{i}.png')
    return root


# ---------------------------------------------------------------------------------- tasks
def test_group_id_is_prefix_before_first_underscore():
    assert group_id('/x/p17_0003_a.png') == 'p17'
    assert group_id('nounderscore.png') == 'nounderscore'
    assert group_id('1A11_CRC-Prim-HE-07_022.tif_Row_601_Col_151.tif') == '1A11'


def test_load_task_layout_missing_val_and_errors(tmp_path):
    make_task(tmp_path / 't', per_split=(3, 0, 2))
    task = load_task(tmp_path / 't')
    assert task.class_names == ['class0', 'class1'] and task.metric == 'roc_auc'
    assert len(task.splits['train']) == 6 and not task.has('val') and len(task.splits['test']) == 4
    assert task.splits['train'].labels == [0, 0, 0, 1, 1, 1]
    assert task.splits['train'].groups[:3] == ['train0', 'train1', 'train2']
    make_task(tmp_path / 'm', n_classes=3, per_split=(2, 1, 1))
    assert load_task(tmp_path / 'm').metric == 'accuracy'
    (tmp_path / 'bad' / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match='test'):
        load_task(tmp_path / 'bad')


# ---------------------------------------------------------------------------------- grouped CV
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_grouped_folds_never_split_a_group(seed):
    rng = np.random.default_rng(seed)
    groups = [f'p{g}' for g in rng.integers(0, 11, 120)]
    y = rng.integers(0, 3, 120)
    folds, note = grouped_folds(y, groups, n_splits=5, seed=seed)
    assert len(folds) == 5 and 'Group' in note
    fold_of: dict[str, set[int]] = {}
    seen = np.zeros(120, int)
    for k, (tr, va) in enumerate(folds):
        assert not {groups[i] for i in tr} & {groups[i] for i in va}
        seen[va] += 1
        for i in va:
            fold_of.setdefault(groups[i], set()).add(k)
    assert (seen == 1).all()  # every sample validated exactly once
    assert all(len(f) == 1 for f in fold_of.values())  # one group, one fold


def test_grouped_folds_few_groups_and_single_group():
    y = [0, 1] * 6
    folds, note = grouped_folds(y, ['a', 'b', 'c'] * 4, n_splits=5)
    assert len(folds) == 3
    folds, note = grouped_folds(y, ['image'] * 12, n_splits=5)
    assert 'UNGROUPED' in note and len(folds) == 5


# ---------------------------------------------------------------------------------- metrics
def test_metrics_against_sklearn_and_significance_rule():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    s = np.round(rng.normal(y, 1.0), 1)  # rounding makes ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 3.0]])
    assert score('accuracy', [0, 1, 0], logits) == pytest.approx(2 / 3)
    assert score('roc_auc', [0, 1, 1], logits) == 1.0
    assert mean_std([0.8, 0.9]) == pytest.approx((0.85, 0.05))
    assert significant([0.80, 0.80], [0.90, 0.90])  # std 0: any difference counts
    assert not significant([0.80, 0.84], [0.85, 0.85])  # 0.03 < 2 * 0.02
    assert significant([0.70, 0.72], [0.80, 0.80])  # 0.09 > 2 * 0.01


# ---------------------------------------------------------------------------------- linear
def test_fit_linear_tunes_C_over_the_paper_grid():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = rng.normal(size=(90, 5)) + 3 * np.eye(3, 5)[y]
    groups = [f'g{i % 10}' for i in range(90)]
    res = fit_linear(X[::2], y[::2], groups[::2], X[1::2], y[1::2], metric='accuracy', seed=0)
    assert list(res['cv_scores']) == list(C_GRID) and len(C_GRID) == 11
    assert C_GRID[0] == pytest.approx(1e-10) and C_GRID[-1] == 1.0
    assert res['C'] in C_GRID and res['cv_scores'][res['C']] == max(res['cv_scores'].values())
    assert res['score'] > 0.9
    lr = fit_linear(X[::2], y[::2], groups[::2], X[1::2], y[1::2], metric='accuracy', classifier='logreg')
    assert lr['score'] > 0.9


def _run_evaluate(tmp_path, task, models, **kw):
    kw = dict(dict(seeds=2, img_size=32, num_workers=0, progress=False, batch_size=16), **kw)
    return evaluate(task, models, out=tmp_path / 'rep', **kw)


def test_evaluate_linear_binary_uses_auc_and_report_parses(tmp_path):
    from sklearn.metrics import roc_auc_score
    from sklearn.svm import LinearSVC

    task = make_task(tmp_path / 'bin')
    res = _run_evaluate(tmp_path, task, [TINY, 'random:resnet18'])
    assert res['metric'] == 'roc_auc'
    data = json.loads((tmp_path / 'rep' / 'results.json').read_text())
    assert data['summary']['linear'][TINY]['n'] == 2 and len(data['runs']) == 4
    md = (tmp_path / 'rep' / 'results.md').read_text()
    assert 'ROC AUC' in md and f'`{TINY}`' in md and '| linear |' in md
    with Image.open(tmp_path / 'rep' / 'results.png') as im:
        assert im.format == 'PNG' and im.size[0] > 100
    # the reported score is an AUC of the SVM refit on train+val with the chosen C
    run = data['runs'][0]
    feats, info = evaluate_mod.cached_features(
        evaluate_mod.load_task(task),
        evaluate_mod.FeatureExtractor(TINY, seed=0, img_size=32, device='cpu'),
        tmp_path / 'rep' / 'cache',
        num_workers=0,
        progress=False,
    )
    assert info['cache'] == res['model_info'][TINY]['feature_cache']
    X = np.concatenate([feats['train'][0], feats['val'][0]])
    y = np.concatenate([feats['train'][1], feats['val'][1]])
    clf = LinearSVC(C=run['C'], max_iter=10000, random_state=0).fit(X, y)
    assert run['score'] == pytest.approx(
        roc_auc_score(feats['test'][1], clf.decision_function(feats['test'][0]))
    )
    assert 'Group' in run['folds']


def test_evaluate_linear_multiclass_uses_accuracy_and_reuses_cache(tmp_path, monkeypatch):
    task = make_task(tmp_path / 'multi', n_classes=3, per_split=(6, 2, 3))
    res = _run_evaluate(tmp_path, task, [TINY], seeds=1)
    assert res['metric'] == 'accuracy'
    acc = res['runs'][0]['score']
    assert round(acc * 9) == pytest.approx(acc * 9)  # a fraction of the 9 test images

    def no_extraction(*a, **k):
        raise AssertionError('features should come from the cache')

    monkeypatch.setattr(evaluate_mod, 'extract_source', no_extraction)
    again = _run_evaluate(tmp_path, task, [TINY], seeds=1, classifier='logreg')
    assert again['runs'][0]['classifier'] == 'logreg'
    assert 'accuracy' in (tmp_path / 'rep' / 'results.md').read_text()


def test_markdown_marks_significant_differences():
    runs = [
        {'model': m, 'mode': 'linear', 'seed': s, 'score': v}
        for m, vals in {'ref': [0.80, 0.80], 'better': [0.90, 0.91], 'same': [0.79, 0.82]}.items()
        for s, v in enumerate(vals)
    ]
    summary = summarize(runs, ['ref', 'better', 'same'], ['linear'])
    assert summary['linear']['better']['significant_vs_first']
    assert not summary['linear']['same']['significant_vs_first']
    md = markdown_table(
        {
            'task': 't',
            'metric': 'accuracy',
            'n_seeds': 2,
            'models': ['ref', 'better', 'same'],
            'summary': summary,
            'sizes': {'train': 1, 'test': 1},
            'n_classes': 3,
        }
    )
    row = next(line for line in md.splitlines() if line.startswith('| linear'))
    assert '80.00 ± 0.00' in row and '90.50 ± 0.50 ▲' in row and '80.50 ± 1.50 |' in row


# ---------------------------------------------------------------------------------- finetune
def test_finetune_selects_best_val_epoch(tmp_path):
    task = load_task(make_task(tmp_path / 't', per_split=(4, 4, 4), size=16))
    cfg = FinetuneConfig(epochs=3, lrs=(0.05,), batch_size=4, num_workers=0, img_size=32, device='cpu')
    res = finetune_lr(TINY, task, 0.05, cfg, seed=0, score_test_every_epoch=True)
    assert len(res['val_curve']) == 3 and len(res['train_loss']) == 3
    assert res['best_epoch'] == int(np.argmax(res['val_curve'])) + 1
    assert res['val'] == max(res['val_curve'])
    assert res['score'] == pytest.approx(res['test_curve'][res['best_epoch'] - 1])


def test_finetune_lr_grid_picks_best_val_and_handles_missing_val(tmp_path):
    task = load_task(make_task(tmp_path / 't', per_split=(4, 2, 2), size=16))
    cfg = FinetuneConfig(epochs=1, lrs=(0.05, 1e-6), batch_size=4, num_workers=0, img_size=32, device='cpu')
    res = finetune(TINY, task, cfg, seed=1)
    vals = [r['val'] for r in res['per_lr']]
    assert res['val'] == max(vals) and res['lr'] == res['per_lr'][vals.index(max(vals))]['lr']
    noval = load_task(make_task(tmp_path / 'nv', per_split=(4, 0, 2), size=16))
    out = finetune_lr(
        TINY, noval, 0.01, FinetuneConfig(epochs=2, batch_size=4, num_workers=0, img_size=32, device='cpu')
    )
    assert out['best_epoch'] == 2 and out['selection'].startswith('last epoch') and out['val'] is None


# ---------------------------------------------------------------------------------- cli + real data
def test_cli_harness_evaluate(tmp_path, capsys):
    task = make_task(tmp_path / 't')
    parser = argparse.ArgumentParser(prog='mtdp')
    add_cli(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(
        [
            'evaluate',
            '--task',
            str(task),
            '--models',
            f'tiny={TINY}',
            '--mode',
            'linear',
            'finetune',
            '--seeds',
            '1',
            '--out',
            str(tmp_path / 'r'),
            '--img-size',
            '32',
            '--workers',
            '0',
            '--epochs',
            '1',
            '--lrs',
            '0.01',
            '--ft-batch-size',
            '8',
            '--no-progress',
        ]
    )
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert '| finetune |' in printed and '| linear |' in printed and '| `tiny` |' in printed
    assert f'`tiny` = `{TINY}`' in printed
    assert set(json.loads((tmp_path / 'r' / 'results.json').read_text())['modes']) == {'linear', 'finetune'}


@pytest.mark.skipif(not (SHARED / 'crc-he-5class').is_dir(), reason='shared data absent')
def test_linear_on_real_crc_patches(tmp_path):
    """The shared H&E copy has train/val only: val is scored as the test set (--test-split val)."""
    crc = SHARED / 'crc-he-5class'
    for split in ('train', 'val'):
        for cls in ('AC', 'H'):
            d = tmp_path / 'task' / split / cls
            d.mkdir(parents=True)
            for img in sorted((crc / split / cls).iterdir())[:6]:
                (d / img.name).symlink_to(img)
    with pytest.raises(TaskFolderError, match='found: train, val'):
        _run_evaluate(tmp_path, tmp_path / 'task', [TINY], seeds=1)
    res = _run_evaluate(tmp_path, tmp_path / 'task', [TINY], seeds=1, test_split='val')
    run = res['runs'][0]
    assert res['metric'] == 'roc_auc' and 0.0 <= run['score'] <= 1.0
    assert 'UNGROUPED' in run['folds']  # these file names carry no patient prefix ('image_AC_...')
    assert any('UNGROUPED' in w for w in res['warnings'])
    assert res['sizes'] == {'train': 12, 'test': 12}


# ---------------------------------------------------------------------------------- review fixes
@pytest.mark.parametrize('n_classes', [3, 4])
def test_fit_linear_cv_scores_when_a_training_fold_misses_a_class(n_classes):
    """Group g0 holds all of class 0 (plus some class 1): the fold validating g0 trains without class 0."""
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(10, int), np.ones(6, int), np.repeat(np.arange(1, n_classes), 20)])
    groups = ['g0'] * 16 + [f'g{1 + i % 4}' for i in range(len(y) - 16)]
    X = rng.normal(size=(len(y), 6)) + 4 * np.eye(n_classes, 6)[y]
    Cs = (1e-2, 1.0)
    res = fit_linear(X, y, groups, X, y, metric='accuracy', Cs=Cs, seed=0)
    folds, _ = grouped_folds(y, groups, seed=0)
    assert any(0 not in set(y[tr]) for tr, _ in folds)
    for C in Cs:
        expected = np.mean(
            [
                accuracy(
                    y[va], LinearSVC(C=C, max_iter=10000, random_state=0).fit(X[tr], y[tr]).predict(X[va])
                )
                for tr, va in folds
            ]
        )
        assert res['cv_scores'][C] == pytest.approx(expected)


def test_fit_linear_binary_sign_refers_to_label_1_and_skips_one_class_folds():
    rng = np.random.default_rng(1)
    y = np.array([0] * 8 + [1] * 8 + [0, 1] * 12)
    groups = ['only0'] * 8 + ['only1'] * 8 + [f'g{i % 3}' for i in range(24)]
    X = rng.normal(size=(len(y), 3)) + 3 * y[:, None]
    res = fit_linear(X, y, groups, X, y, metric='roc_auc', Cs=(1.0,), seed=0)
    assert res['score'] > 0.95 and res['cv_scores'][1.0] > 0.9


def test_finetune_lr_selection_ignores_nan_val(monkeypatch):
    import types

    from mtdp_hub.evaluation import finetune as ft_mod

    task, cfg = types.SimpleNamespace(has=lambda split: True), FinetuneConfig(lrs=(1e-3, 1e-4, 1e-5))

    def run_with(vals):
        it = iter(vals)
        monkeypatch.setattr(
            ft_mod,
            'finetune_lr',
            lambda spec, task, lr, cfg, seed=0, weights=None: {
                'lr': lr,
                'val': next(it),
                'score': lr,
                'best_epoch': 1,
                'selection': 'best val epoch',
                'details': {},
            },
        )
        return ft_mod.finetune('x', task, cfg)

    for vals in ([float('nan'), 0.7, 0.6], [0.6, float('nan'), 0.7], [0.6, 0.7, float('nan')]):
        res = run_with(vals)
        assert res['val'] == 0.7 and res['lr'] == cfg.lrs[vals.index(0.7)]
    res = run_with([float('nan')] * 3)  # never defined: the first LR, whatever the order
    assert res['lr'] == 1e-3


def test_roc_auc_uses_sklearn_and_keeps_nan_for_one_class():
    import inspect

    from mtdp_hub.evaluation import metrics

    assert not hasattr(metrics, '_average_ranks') and 'roc_auc_score' in inspect.getsource(metrics.roc_auc)
    assert np.isnan(roc_auc([0, 0, 0], [0.1, 0.2, 0.3])) and np.isnan(roc_auc([], []))
    assert roc_auc([0, 1, 0, 1], [0.1, 0.9, 0.5, 0.5]) == pytest.approx(0.875)


def _runs(spec: dict[str, tuple[list[float], bool]], mode='linear'):
    return [
        {'model': m, 'mode': mode, 'seed': s, 'score': v, 'independent': ind}
        for m, (vals, ind) in spec.items()
        for s, v in enumerate(vals)
    ]


def test_significance_for_deterministic_backbones():
    # two fixed backbones in linear mode: stds are CV-shuffle noise, no significance test at all
    summary = summarize(
        _runs({'a': ([0.80, 0.801], False), 'b': ([0.85, 0.851], False)}), ['a', 'b'], ['linear']
    )
    b = summary['linear']['b']
    assert b['significant_vs_first'] is None and b['std_source'] == 'cv_shuffles'
    assert summary['linear']['a']['std_source'] == 'cv_shuffles'
    # fixed vs independent: the fixed side's std counts as 0, the threshold is 2x the other std
    summary = summarize(
        _runs({'fixed': ([0.80, 0.80], False), 'mtl': ([0.83, 0.85], True)}), ['fixed', 'mtl'], ['linear']
    )
    assert summary['linear']['mtl']['significant_vs_first'] is True  # 0.04 > 2 * 0.01
    summary = summarize(
        _runs({'fixed': ([0.70, 0.90], False), 'mtl': ([0.83, 0.85], True)}), ['fixed', 'mtl'], ['linear']
    )
    assert summary['linear']['mtl']['significant_vs_first'] is True  # CV std 0.1 of the fixed side ignored
    summary = summarize(
        _runs({'fixed': ([0.80, 0.80], False), 'mtl': ([0.78, 0.86], True)}), ['fixed', 'mtl'], ['linear']
    )
    assert summary['linear']['mtl']['significant_vs_first'] is False  # 0.02 < 2 * 0.04
    assert significant([0.80, 0.80], [0.90, 0.90])  # both independent: the paper's rule unchanged
    assert significant([0.80, 0.80], [0.90, 0.90], a_independent=False, b_independent=False) is None
    md = markdown_table(
        {
            'task': 't',
            'metric': 'accuracy',
            'n_seeds': 2,
            'models': ['a', 'b'],
            'summary': summarize(
                _runs({'a': ([0.80, 0.801], False), 'b': ([0.85, 0.851], False)}), ['a', 'b'], ['linear']
            ),
            'sizes': {'train': 1, 'test': 1},
            'n_classes': 3,
        }
    )
    row = next(line for line in md.splitlines() if line.startswith('| linear'))
    assert '▲' not in row and '†' in row and '○' in row
    assert 'CV shuffles only, one fixed backbone' in md and 'not tested' in md


def test_evaluate_records_std_source(tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate_mod, 'is_random', lambda spec: False)  # TINY acts as a fixed backbone
    task = make_task(tmp_path / 'bin', per_split=(6, 2, 2))
    res = _run_evaluate(tmp_path, task, [TINY], seeds=2)
    assert all(r['independent'] is False for r in res['runs'])
    data = json.loads((tmp_path / 'rep' / 'results.json').read_text())
    assert data['summary']['linear'][TINY]['std_source'] == 'cv_shuffles'
    assert 'significance_rule' in data
    assert 'CV shuffles only, one fixed backbone' in (tmp_path / 'rep' / 'results.md').read_text()


def test_feature_cache_is_keyed_on_weight_identity(tmp_path):
    """New weights behind the same local-dir spec: new features, not the cached ones."""
    import timm
    import torch
    from timm.models import save_for_hf

    from mtdp_hub.features import FeatureExtractor

    task = load_task(make_task(tmp_path / 't', per_split=(2, 0, 2)))
    spec = f'local-dir:{tmp_path / "m"}'
    feats = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        save_for_hf(timm.create_model('test_resnet', num_classes=0), tmp_path / 'm', safe_serialization=True)
        ext = FeatureExtractor(spec, img_size=32, device='cpu')
        out, info = evaluate_mod.cached_features(task, ext, tmp_path / 'cache', num_workers=0, progress=False)
        assert info['provenance']['weights']['sha256'] == ext.provenance()['weights']['sha256']
        feats.append((out['train'][0], info['cache']))
    assert feats[0][1] != feats[1][1]
    assert not np.allclose(feats[0][0], feats[1][0])
