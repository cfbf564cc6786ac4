"""The model cards of the released models, shipped inside the wheel as ``mtdp_hub.model_cards``.

This folder is the source; ``setup.cfg`` maps it into the package (``package_dir``) and
:func:`mtdp_hub.export.render_card` reads it with :mod:`importlib.resources`.
"""
