"""torch.hub entry points: ``torch.hub.load('ORG/mtdp-hub', 'mtdp_resnet50', pretrained=True)``."""

dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

from mtdp_hub.hub import mtdp_densenet121, mtdp_resnet50  # noqa: E402,F401
