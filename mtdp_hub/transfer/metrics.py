"""Scores, their summary over seeds, and the paper's significance rule (numpy only).

- accuracy for multi-class tasks, ROC AUC for binary ones (scores = positive-class score);
- mean +- std over seeds, std is the population std (``numpy.std``, ddof=0);
- a difference is *significant* when it exceeds 2x the larger of the two stds (the paper's rule;
  two deterministic runs, std 0, differ significantly whenever they differ at all).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ('accuracy', 'roc_auc')


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float('nan')


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind='mergesort')
    sorted_x = x[order]
    ranks = np.empty(len(x), dtype=np.float64)
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1  # ties share their average rank
        i = j + 1
    return ranks


def roc_auc(y_true: Sequence[int], scores: Sequence[float]) -> float:
    """Binary ROC AUC (Mann-Whitney U); ``nan`` when only one class is present."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float('nan')
    ranks = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def score(metric: str, y_true: Sequence[int], outputs: np.ndarray) -> float:
    """``outputs``: (N,) positive-class scores or (N, C) class scores / logits."""
    outputs = np.asarray(outputs)
    if metric == 'roc_auc':
        pos = outputs[:, 1] - outputs[:, 0] if outputs.ndim == 2 else outputs
        return roc_auc(y_true, pos)
    if metric == 'accuracy':
        pred = outputs.argmax(1) if outputs.ndim == 2 else (outputs > 0).astype(int)
        return accuracy(y_true, pred)
    raise ValueError(f'unknown metric {metric!r}; one of {METRICS}')


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std())


def significant(a: Sequence[float], b: Sequence[float]) -> bool:
    """True when ``|mean(a) - mean(b)| > 2 * max(std(a), std(b))`` (the paper's rule)."""
    (ma, sa), (mb, sb) = mean_std(a), mean_std(b)
    return abs(ma - mb) > 2 * max(sa, sb)
