"""``python -m mtdp_hub.slides ...`` is ``mtdp slides ...``; it exists for ``torchrun -m mtdp_hub.slides``.

The code is in :mod:`mtdp_hub.features.slides` (library) and :mod:`mtdp_hub.cli.slides` (options).
"""
