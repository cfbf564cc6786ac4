"""Downstream transfer: the paper's evaluation protocol for any backbone (mtdp_*, timm, hf-hub:).

- :mod:`.backbones`  model spec strings -> timm backbone, preprocessing, provenance (torch/timm only)
- :mod:`.tasks`      task folders ``{root}/{train,val,test}/{class}/*``, group id = filename prefix
- :mod:`.metrics`    accuracy / ROC AUC (scikit-learn, lazily), mean +- std, the significance rule
- :mod:`.linear`     grouped-CV linear SVM / logistic regression on cached features (scikit-learn)
- :mod:`.finetune`   backbone + fresh linear head, LR grid, best epoch on val
- :mod:`.report`     JSON + Markdown side-by-side table + PNG plot (matplotlib)
- :mod:`.cli`        ``mtdp evaluate``

The heavy parts need the ``eval`` extra: ``pip install mtdp-hub[eval]``. Importing this package
imports none of them.
"""
