"""torch.hub entry points of mtdp-hub: ``mtdp_resnet50`` and ``mtdp_densenet121``.

From a checkout of this repository (works today, with a local copy of the weights)::

    torch.hub.load('/path/to/mtdp-hub', 'mtdp_resnet50', source='local',
                   pretrained_cfg_overlay=dict(file='/path/to/resnet50-mh-best-191205-141200.pth'))

or with ``MTDP_WEIGHTS_DIR`` naming the folder that holds the original files or converted folders.
Once the repository is published on GitHub as ``mtdp-hub/mtdp-hub`` and the converted weights on
the Hugging Face Hub, ``torch.hub.load('mtdp-hub/mtdp-hub', 'mtdp_resnet50')`` needs neither.
``pretrained=False`` builds the architecture with random weights.
"""

dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

from mtdp_hub.hub import mtdp_densenet121, mtdp_resnet50  # noqa: E402,F401
