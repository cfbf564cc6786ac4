"""Downstream transfer: the paper's evaluation protocol for any backbone (mtdp_*, timm, hf-hub:).

A leaf of the package: nothing in ``mtdp_hub`` imports it but the ``mtdp evaluate`` command.

- :mod:`.protocol`   run every model (``NAME=SPEC``, optional weight file) in every mode over seeds,
  side by side; every model loaded before any work, a failing model recorded, the others run
- :mod:`.metrics`    accuracy / ROC AUC, balanced accuracy, per-class metrics, confusion matrix
  (scikit-learn, lazily), mean +- std, the significance rule
- :mod:`.linear`     grouped-CV linear SVM / logistic regression on cached features (scikit-learn)
- :mod:`.finetune`   backbone + fresh linear head, LR grid, best epoch on val (uint8 batches,
  normalised on the device)
- :mod:`.report`     JSON + Markdown side-by-side table with what to read first + PNG plot (matplotlib)

Task folders are read by :mod:`mtdp_hub.tasks`, features come from :mod:`mtdp_hub.features`.
The heavy parts need the ``eval`` extra: ``pip install mtdp-hub[eval]``; importing this package
imports none of them.
"""

from .protocol import MODES, evaluate, load_task, parse_models

__all__ = ['MODES', 'evaluate', 'load_task', 'parse_models']
