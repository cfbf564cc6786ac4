"""Scores, their summary over seeds, and the paper's significance rule.

numpy at import time; ROC AUC imports scikit-learn (the ``eval`` extra) when called.

- accuracy for multi-class tasks, ROC AUC for binary ones (scores = positive-class score);
- beside them (:func:`classification_details`, scikit-learn): balanced accuracy, precision /
  recall / F1 / support per class and the confusion matrix of the predicted labels;
- mean +- std over seeds, std is the population std (``numpy.std``, ddof=0);
- a difference is *significant* when it exceeds 2x the larger of the two stds (the paper's rule),
  where a std only counts when it comes from independently initialised/trained models
  (``random:`` backbones, fine-tuning). A fixed-weight backbone in linear mode is one
  deterministic model whose "seeds" only reshuffle the CV folds; following the paper's convention
  for its deterministic ImageNet FE (reported without std), that side's std is taken as 0 and the
  threshold is 2x the other side's std. Between two deterministic sides there is no variance to
  test against, so no significance is claimed (``None``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import MissingDependencyError

METRICS = ('accuracy', 'roc_auc')


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float('nan')


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Binary ROC AUC (``sklearn.metrics.roc_auc_score``, label 1 positive); ``nan`` when only one
    class is present."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.all() or not y.any():  # also the empty case
        return float('nan')
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError as e:
        raise MissingDependencyError('ROC AUC needs scikit-learn: pip install mtdp-hub[eval]') from e
    return float(roc_auc_score(y, s))


def score(metric: str, y_true: Sequence[int], outputs: np.ndarray) -> float:
    """``outputs``: (N,) positive-class scores or (N, C) class scores / logits."""
    outputs = np.asarray(outputs)
    if metric == 'roc_auc':
        pos = outputs[:, 1] - outputs[:, 0] if outputs.ndim == 2 else outputs
        return roc_auc(y_true, pos)
    if metric == 'accuracy':
        return accuracy(y_true, predictions(outputs))
    raise ValueError(f'unknown metric {metric!r}; one of {METRICS}')


def predictions(outputs: np.ndarray) -> np.ndarray:
    """Predicted labels from (N, C) class scores (argmax) or (N,) binary scores (label 1 when > 0)."""
    outputs = np.asarray(outputs)
    return outputs.argmax(1) if outputs.ndim == 2 else (outputs > 0).astype(np.int64)


def classification_details(
    y_true: Sequence[int], outputs: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision / recall / F1 / support and the confusion
    matrix (rows: true class, columns: predicted class, in the order of ``class_names``) of the
    labels predicted from ``outputs`` (:func:`predictions`). A class never predicted has precision 0."""
    try:
        from sklearn.metrics import balanced_accuracy_score, confusion_matrix, precision_recall_fscore_support
    except ImportError as e:
        raise MissingDependencyError('per-class metrics need scikit-learn: pip install mtdp-hub[eval]') from e
    y_true, y_pred = np.asarray(y_true), predictions(outputs)
    labels = list(range(len(class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # "y_pred contains classes not in y_true"
        balanced = balanced_accuracy_score(y_true, y_pred) if len(y_true) else float('nan')
    return {
        'accuracy': accuracy(y_true, y_pred),
        'balanced_accuracy': float(balanced),
        'per_class': {
            str(name): {
                'precision': float(precision[i]),
                'recall': float(recall[i]),
                'f1': float(f1[i]),
                'support': int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        'confusion_matrix': confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())


def significant(
    a: Sequence[float], b: Sequence[float], *, a_independent: bool = True, b_independent: bool = True
) -> bool | None:
    """``|mean(a) - mean(b)| > 2 * max(std(a), std(b))`` (the paper's rule), with the std of a
    deterministic side (``*_independent=False``: scores of one fixed model over CV shuffles) taken
    as 0; ``None`` (not tested) when both sides are deterministic."""
    if not (a_independent or b_independent):
        return None
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    sa, sb = (sa if a_independent else 0.0), (sb if b_independent else 0.0)
    return bool(abs(ma - mb) > 2 * max(sa, sb))
