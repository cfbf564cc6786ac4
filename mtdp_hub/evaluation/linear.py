"""The paper's feature-extraction protocol: frozen pooled features -> linear SVM.

C is tuned over ``{1e-10, 1e-9, ..., 1e-1, 1}`` by 5-fold cross-validation on train+val with
folds grouped by patient/slide/image (no group in two folds), the classifier is refit on
train+val with the best C and scored on test. Logistic regression is offered as an option.
Needs scikit-learn (``pip install mtdp-hub[eval]``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InvalidOptionError, MissingDependencyError, TaskFolderError
from .metrics import classification_details, score

C_GRID: tuple[float, ...] = tuple(float(c) for c in 10.0 ** np.arange(-10, 1))
CLASSIFIERS = ('svm', 'logreg')


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError(
            'linear evaluation needs scikit-learn: pip install mtdp-hub[eval]'
        ) from e


def grouped_folds(
    y: Sequence[int], groups: Sequence[str], n_splits: int = 5, seed: int = 0
) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """Cross-validation folds where one group never appears in two folds; returns (folds, note).

    Uses ``StratifiedGroupKFold`` (shuffled by ``seed``). With fewer groups than ``n_splits`` it
    uses one fold per group; with a single group it falls back to ungrouped stratified folds
    and says so in the note.
    """
    _sklearn()
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    y = np.asarray(y)
    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    X = np.zeros((len(y), 1))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # "least populated class has only N members"
        if n_groups >= 2:
            k = min(n_splits, n_groups)
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = list(cv.split(X, y, groups))
            note = f'{k}-fold StratifiedGroupKFold over {n_groups} groups'
        else:
            k = max(2, min(n_splits, np.bincount(y).min()))
            cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            folds = list(cv.split(X, y))
            note = f'{k}-fold StratifiedKFold, UNGROUPED: only {n_groups} group id in the file names'
    return folds, note


def make_classifier(kind: str, C: float, seed: int = 0):
    _sklearn()
    if kind == 'svm':
        from sklearn.svm import LinearSVC

        return LinearSVC(C=C, max_iter=10000, random_state=seed)
    if kind == 'logreg':
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, max_iter=2000)
    raise InvalidOptionError(f'classifier must be one of {CLASSIFIERS}, not {kind!r}')


def _outputs(clf, X: np.ndarray, n_classes: int) -> np.ndarray:
    """Decision scores in the full label space ``0..n_classes-1``.

    ``decision_function`` only has columns for ``clf.classes_`` (the labels seen in training), so
    a CV training fold that lacks a class would shift every argmax to the wrong label; missing
    classes get ``-inf``. Binary tasks return the 1-D score of label 1 (the ROC AUC input).
    """
    d = clf.decision_function(X)
    classes = np.asarray(clf.classes_)
    if n_classes == 2:
        if d.ndim != 1 or list(classes) != [0, 1]:
            raise TaskFolderError(f'binary task needs both labels 0 and 1 in training, got classes {classes}')
        return d  # sklearn: positive score = classes_[1] = label 1
    out = np.full((len(X), n_classes), -np.inf)
    if d.ndim == 1:  # a multi-class task whose training part holds only two of its classes
        out[:, classes[0]], out[:, classes[1]] = -d, d
    else:
        out[:, classes] = d
    return out


def fit_linear(
    X_train: np.ndarray,
    y_train: Sequence[int],
    groups: Sequence[str],
    X_test: np.ndarray,
    y_test: Sequence[int],
    *,
    metric: str,
    classifier: str = 'svm',
    Cs: Sequence[float] = C_GRID,
    n_splits: int = 5,
    seed: int = 0,
    n_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Tune C by grouped CV on (``X_train``, ``y_train``), refit, score on test.

    ``X_train`` is train+val in the paper's protocol. Labels are class indices ``0..n_classes-1``
    (``n_classes`` defaults to the largest label in train or test + 1). CV folds whose training
    part holds a single class are skipped. Returns the test score, the chosen C, the mean CV score
    of every C, the fold note, ``grouped`` (False when the folds fell back to ungrouped: a single
    group id), ``C_at_edge`` (``'smallest'`` / ``'largest'`` when the chosen C is an end of a grid
    of several values, else None: the best C may lie outside the grid) and the test set's
    ``details`` (:func:`~mtdp_hub.evaluation.metrics.classification_details`).
    """
    from sklearn.exceptions import ConvergenceWarning

    y_train, y_test = np.asarray(y_train), np.asarray(y_test)
    if n_classes is None:
        n_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    n_classes = max(int(n_classes), 2)
    folds, note = grouped_folds(y_train, groups, n_splits=n_splits, seed=seed)
    cv_scores = []
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', ConvergenceWarning)
        for C in Cs:
            fold_scores = []
            for tr, va in folds:
                if len(np.unique(y_train[tr])) < 2:
                    continue
                clf = make_classifier(classifier, C, seed).fit(X_train[tr], y_train[tr])
                fold_scores.append(score(metric, y_train[va], _outputs(clf, X_train[va], n_classes)))
            cv_scores.append(float(np.nanmean(fold_scores)) if fold_scores else float('nan'))
        best = int(np.nanargmax(cv_scores))  # ties -> the smallest C (first in the grid)
        clf = make_classifier(classifier, Cs[best], seed).fit(X_train, y_train)
        outputs = _outputs(clf, X_test, n_classes)
    names = list(class_names) if class_names is not None else [str(i) for i in range(n_classes)]
    edge = None
    if len(Cs) > 1 and float(Cs[best]) in (min(Cs), max(Cs)):
        edge = 'smallest' if float(Cs[best]) == min(Cs) else 'largest'
    return {
        'score': score(metric, y_test, outputs),
        'C': float(Cs[best]),
        'C_at_edge': edge,
        'cv_scores': dict(zip(map(float, Cs), cv_scores)),
        'folds': note,
        'grouped': len(set(groups)) >= 2,
        'details': classification_details(y_test, outputs, names),
        'n_train': int(len(y_train)),
        'n_test': int(len(y_test)),
    }
