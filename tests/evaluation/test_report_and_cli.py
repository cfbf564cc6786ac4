"""mtdp evaluate as a practitioner meets it: named models and weight files, checks before any work,
a report that survives a failing model, the chosen test split, warnings said in the report, the
metrics beside the task metric, the plot, and the help text."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mtdp_hub.cli import evaluate as cli_evaluate
from mtdp_hub.errors import (
    IncompleteEvaluationError,
    InvalidOptionError,
    ModelLoadError,
    TaskFolderError,
)
from mtdp_hub.evaluation import MODES, evaluate, load_task
from mtdp_hub.evaluation import protocol as protocol_mod
from mtdp_hub.evaluation.finetune import LR_GRID, FinetuneConfig, check_plan
from mtdp_hub.evaluation.linear import C_GRID
from mtdp_hub.evaluation.metrics import classification_details
from mtdp_hub.evaluation.protocol import parse_models
from mtdp_hub.evaluation.report import figure, markdown_table, report_warnings, summarize

from .test_evaluation import TINY, make_task

QUICK = dict(seeds=1, img_size=32, num_workers=0, progress=False, batch_size=16)


def _parser():
    parser = argparse.ArgumentParser(prog='mtdp')
    cli_evaluate.add_cli(parser.add_subparsers(dest='command', required=True))
    return parser


# ---------------------------------------------------------------------------------- command line
def test_cli_constants_equal_the_library_defaults():
    assert cli_evaluate.MODES == MODES and cli_evaluate.LR_GRID == LR_GRID
    assert cli_evaluate.C_GRID == pytest.approx(C_GRID, rel=1e-12)


def test_evaluate_help_documents_every_option_with_defaults_and_the_cost():
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices['evaluate']
    for action in sub._actions:
        assert action.help, f'{action.option_strings} has no help text'
    text = sub.format_help()
    assert '``' not in text and '100 x 4 x 5 = 2000 epochs' in text
    assert '(default: 100)' in text and '(default: 5)' in text and '(default: test)' in text
    assert 'NAME=FILE' in text and '[NAME=]SPEC' in text


def test_cli_weights_syntax():
    assert cli_evaluate.parse_weights(['a=x.safetensors', 'b=/w/y.pth']) == {
        'a': 'x.safetensors',
        'b': '/w/y.pth',
    }
    assert cli_evaluate.parse_weights(['only.safetensors']) == {'': 'only.safetensors'}
    with pytest.raises(InvalidOptionError, match='two weight files for a'):
        cli_evaluate.parse_weights(['a=x', 'a=y'])


# ---------------------------------------------------------------------------------- models
def test_parse_models_aliases_and_short_names():
    specs = parse_models(
        ['mtl=mtdp_resnet50', 'hf-hub:org/some_model', 'local-dir:/x/exports/run7', 'resnet18']
    )
    assert specs == {
        'mtl': 'mtdp_resnet50',
        'some_model': 'hf-hub:org/some_model',
        'run7': 'local-dir:/x/exports/run7',
        'resnet18': 'resnet18',
    }
    # short names that would collide keep the whole spec
    assert list(parse_models(['local-dir:/a/m', 'local-dir:/b/m'])) == ['local-dir:/a/m', 'local-dir:/b/m']
    with pytest.raises(InvalidOptionError, match="'a' given twice"):
        parse_models(['a=resnet18', 'a=resnet34'])


def test_a_model_that_cannot_load_is_named_before_any_work(tmp_path):
    task = make_task(tmp_path / 't', per_split=(2, 0, 2))
    with pytest.raises(ModelLoadError) as info:
        evaluate(task, [TINY, 'typo=resnet_18x'], out=tmp_path / 'rep', **QUICK)
    assert 'typo (resnet_18x)' in str(info.value) and '1 of 2' in str(info.value)
    with pytest.raises(ModelLoadError, match=r'mine \(test_resnet with weights .*nowhere.safetensors\)'):
        evaluate(
            task,
            ['mine=test_resnet'],
            weights={'mine': str(tmp_path / 'nowhere.safetensors')},
            out=tmp_path / 'rep',
            **QUICK,
        )
    with pytest.raises(InvalidOptionError, match='no such model; the models are'):
        evaluate(task, [TINY], weights={'other': 'x.safetensors'}, out=tmp_path / 'rep', **QUICK)
    assert not (tmp_path / 'rep').exists()  # nothing extracted, nothing written


def test_weights_file_per_model_is_what_is_evaluated(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    from mtdp_hub._io import sha256_file

    torch.manual_seed(3)
    file = tmp_path / 'mine.safetensors'
    save_file(timm.create_model('test_resnet', num_classes=0).state_dict(), file)
    task = make_task(tmp_path / 't', per_split=(4, 0, 2))
    res = evaluate(task, ['mine=test_resnet'], weights={'mine': str(file)}, out=tmp_path / 'rep', **QUICK)
    prov = res['model_info']['mine']['provenance']['weights']
    assert prov['sha256'] == sha256_file(file) and res['weights'] == {'mine': str(file)}
    assert res['runs'][0]['model'] == 'mine' and res['runs'][0]['spec'] == 'test_resnet'
    md = (tmp_path / 'rep' / 'results.md').read_text()
    assert '`mine` = `test_resnet` with weights' in md and '| `mine` |' in md


# ---------------------------------------------------------------------------------- failures keep the report
def test_a_model_failing_later_keeps_the_report_of_the_others(tmp_path, monkeypatch, capsys):
    task = make_task(tmp_path / 't', per_split=(4, 0, 2))
    real = protocol_mod.cached_features

    def disk_full_for_the_second(task, extractor, *a, **k):
        if extractor.spec == 'random:resnet18':
            raise OSError(28, 'No space left on device')
        return real(task, extractor, *a, **k)

    monkeypatch.setattr(protocol_mod, 'cached_features', disk_full_for_the_second)
    with pytest.raises(IncompleteEvaluationError) as info:
        evaluate(task, [TINY, 'r18=random:resnet18', 'again=' + TINY], out=tmp_path / 'rep', **QUICK)
    assert 'r18: OSError' in str(info.value) and 'results.md' in str(info.value)
    data = json.loads((tmp_path / 'rep' / 'results.json').read_text())
    assert {r['model'] for r in data['runs']} == {TINY, 'again'}  # the model after it still ran
    assert 'No space left' in data['failed_models']['r18']
    md = (tmp_path / 'rep' / 'results.md').read_text()
    assert '`r18` failed' in md and 'No space left' in md
    assert (tmp_path / 'rep' / 'results.png').is_file()
    assert 'r18 failed, the other models go on' in capsys.readouterr().err


# ---------------------------------------------------------------------------------- test split
def test_test_split_chooses_the_scored_folder(tmp_path):
    root = make_task(tmp_path / 'tv', per_split=(4, 2, 0))
    shutil.rmtree(root / 'test')  # train/val only, as the shared H&E copy
    with pytest.raises(TaskFolderError, match=r"no 'test' split folder .*found: train, val.*--test-split"):
        load_task(root)
    task = load_task(root, test_split='val')
    assert set(task.splits) == {'train', 'test'} and len(task.splits['test']) == 4 and not task.has('val')
    res = evaluate(root, [TINY], test_split='val', out=tmp_path / 'rep', **QUICK)
    assert res['sizes'] == {'train': 8, 'test': 4} and res['settings']['test_split'] == 'val'
    cache = Path(res['model_info'][TINY]['feature_cache'])
    assert sorted(p.name for p in cache.glob('*.safetensors')) == ['train.safetensors', 'val.safetensors']
    assert "the test set is the 'val' split folder" in (tmp_path / 'rep' / 'results.md').read_text()


# ---------------------------------------------------------------------------------- fine-tuning without val
def test_finetune_without_val_refuses_a_grid_and_says_what_it_did_with_one_lr(tmp_path):
    root = make_task(tmp_path / 'nv', per_split=(4, 0, 2), size=16)
    task = load_task(root)
    with pytest.raises(
        InvalidOptionError, match='no val split, so nothing can choose among the learning rates'
    ):
        check_plan(task, FinetuneConfig(lrs=(1e-3, 1e-4)))
    with pytest.raises(InvalidOptionError, match='--lrs'):  # refused before any model is loaded or trained
        evaluate(root, ['never=resnet_18x'], modes=['finetune'], out=tmp_path / 'no', **QUICK)
    cfg = FinetuneConfig(epochs=1, lrs=(0.01,), batch_size=4, num_workers=0, img_size=32, device='cpu')
    res = evaluate(root, [TINY], modes=['finetune'], finetune_cfg=cfg, out=tmp_path / 'rep', **QUICK)
    run = res['runs'][0]
    assert run['selection'] == 'last epoch (no val split)' and run['lr'] == 0.01 and len(run['per_lr']) == 1
    md = (tmp_path / 'rep' / 'results.md').read_text()
    assert 'finetune: no val split: one learning rate (0.01) trained for 1 epoch(s)' in md


# ---------------------------------------------------------------------------------- warnings and metrics
def test_ungrouped_cv_and_preprocessing_differences_are_said_in_console_and_markdown(tmp_path, capsys):
    from PIL import Image

    root = make_task(tmp_path / 't', per_split=(6, 0, 2))
    for split in ('train', 'test'):  # one group id for every image: 'slide'
        for i, f in enumerate(sorted((root / split).rglob('*.png'))):
            Image.open(f).save(f.with_name(f'slide_{split}{i}.png'))
            f.unlink()
    res = evaluate(root, [TINY, 'r18=random:resnet18'], out=tmp_path / 'rep', Cs=(1e-3, 1.0), **QUICK)
    err = capsys.readouterr().err
    assert 'UNGROUPED folds' in err and "C at the grid's" in err
    md = (tmp_path / 'rep' / 'results.md').read_text()
    read_first = md.split('**Read first:**')[1].split('- ▲/▼')[0]
    assert 'UNGROUPED for `random:test_resnet`, `r18`' in read_first
    assert '`r18` is given a different preprocessing than `random:test_resnet`' in read_first
    assert 'value of the grid' in read_first  # a two-value grid: any choice is at its edge
    assert res['warnings'] == json.loads((tmp_path / 'rep' / 'results.json').read_text())['warnings']
    assert res['preprocessing']['r18']['interpolation'] != res['preprocessing'][TINY]['interpolation'] or (
        res['preprocessing']['r18']['crop_pct'] != res['preprocessing'][TINY]['crop_pct']
    )


def test_report_warnings_for_c_at_the_edge_and_undefined_val():
    runs = [
        {'model': 'a', 'mode': 'linear', 'seed': s, 'score': 0.8, 'C': 1.0, 'C_at_edge': e, 'grouped': True}
        for s, e in enumerate(['largest', 'largest', None])
    ] + [
        {
            'model': 'a',
            'mode': 'finetune',
            'seed': 0,
            'score': 0.7,
            'lr': 1e-3,
            'selection': 'last epoch (val score undefined)',
        }
    ]
    warnings = report_warnings({'models': ['a'], 'runs': runs})
    assert any('largest value of the grid (C=1) in 2 of 3 seed(s)' in w and '--cs' in w for w in warnings)
    assert any('val score was never defined' in w for w in warnings)
    assert not any('UNGROUPED' in w or 'no val split' in w for w in warnings)


def test_classification_details_against_sklearn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    d = classification_details(y, logits, ['a', 'b', 'c'])
    pred = logits.argmax(1)
    assert d['balanced_accuracy'] == pytest.approx(balanced_accuracy_score(y, pred))
    assert d['confusion_matrix'] == confusion_matrix(y, pred).tolist()
    assert [d['per_class'][c]['f1'] for c in 'abc'] == pytest.approx(f1_score(y, pred, average=None))
    assert [d['per_class'][c]['support'] for c in 'abc'] == np.bincount(y).tolist()
    binary = classification_details([0, 1, 1, 0], np.array([-1.0, 2.0, -0.5, -3.0]), ['neg', 'pos'])
    assert binary['confusion_matrix'] == [[2, 0], [1, 1]] and binary['balanced_accuracy'] == 0.75


def test_results_carry_balanced_accuracy_per_class_metrics_and_confusion_matrix(tmp_path):
    root = make_task(tmp_path / 't', n_classes=3, per_split=(4, 2, 2))
    res = evaluate(root, [TINY], out=tmp_path / 'rep', **QUICK)
    data = json.loads((tmp_path / 'rep' / 'results.json').read_text())
    s = data['summary']['linear'][TINY]
    assert 0 <= s['balanced_accuracy']['mean'] <= 1 and set(s['per_class']) == {'class0', 'class1', 'class2'}
    assert np.sum(s['confusion_matrix']) == res['sizes']['test'] and s['per_class']['class1']['support'] == 2
    md = (tmp_path / 'rep' / 'results.md').read_text()
    assert '## Balanced accuracy (%)' in md and '| class | precision | recall | F1 | support |' in md
    assert '| true / predicted | class0 | class1 | class2 |' in md


# ---------------------------------------------------------------------------------- the plot
def _two_model_result():
    runs = [
        {'model': m, 'mode': 'linear', 'seed': s, 'score': v, 'independent': True}
        for m, vals in {'ref': [0.80, 0.81], 'better': [0.90, 0.91]}.items()
        for s, v in enumerate(vals)
    ]
    return {
        'task': 't',
        'metric': 'accuracy',
        'n_seeds': 2,
        'models': ['ref', 'better'],
        'summary': summarize(runs, ['ref', 'better'], ['linear']),
        'sizes': {'train': 4, 'test': 4},
        'n_classes': 3,
        'test_class_counts': [2, 1, 1],
    }


def test_plot_has_outside_legend_chance_line_seed_points_and_marks():
    import matplotlib.pyplot as plt

    fig = figure(_two_model_result())
    ax = fig.axes[0]
    fig.canvas.draw()
    legend = ax.get_legend()
    assert legend.get_window_extent().x0 >= ax.get_window_extent().x1  # right of the axes
    labels = [t.get_text() for t in legend.get_texts()]
    assert {'ref', 'better', 'chance: always the most frequent class', 'one seed'} <= set(labels)
    assert any(
        line.get_ydata()[0] == pytest.approx(50.0) for line in ax.get_lines() if line.get_linestyle() == '--'
    )
    points = [c for c in ax.collections if len(c.get_offsets()) == 2]
    assert sorted(float(y) for c in points for y in c.get_offsets()[:, 1]) == pytest.approx([80, 81, 90, 91])
    assert [t.get_text() for t in ax.texts] == ['▲']
    plt.close(fig)
    assert '90.50 ± 0.50 ▲' in markdown_table(_two_model_result())
