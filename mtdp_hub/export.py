"""Write a backbone as a Hugging Face model folder that timm loads with ``hf-hub:`` or ``local-dir:``.

The folder holds ``model.safetensors`` (timm keys), ``config.json`` (architecture, num_classes,
pretrained_cfg, via timm's ``save_for_hf``), ``README.md`` (the model card) and, when task heads
are given, ``heads.safetensors`` (one ``nn.Linear`` per task, with task names and classes in the
file's metadata). The folder is written beside its destination and moved into place at the end,
so a failed export never leaves a half-written folder or clobbers an existing one.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from timm.models import save_for_hf
from torch import nn

from ._io import atomic_replace_dir, recover_dir, refuse_output_holding, sha256_file
from .errors import OutputExistsError
from .heads import HEADS_FILE, load_heads, save_heads

__all__ = [
    'export_folder',
    'save_heads',
    'load_heads',
    'render_card',
    'card_text',
    'folder_checksums',
    'PLAIN_TIMM_ARCHITECTURE',
    'ARCHITECTURE_KEYS',
    'exported_cfg',
    'HEADS_FILE',
]

# Exported under a plain timm architecture when the weights and forward pass are exactly timm's,
# so that timm (and tools built on it) load the folder without this package.
PLAIN_TIMM_ARCHITECTURE = {'mtdp_resnet50': 'resnet50'}
# Architectures whose forward differs from plain timm: loading them needs ``import mtdp_hub``.
NEEDS_MTDP_HUB = ('mtdp_densenet121',)

_CARDS_PACKAGE = 'mtdp_hub.model_cards'  # the top-level model_cards/, shipped as package data
_INCLUDE = re.compile(r'<!--\s*include:\s*(?P<name>[\w.-]+)\s*-->')


# pretrained_cfg keys true of any weights of an architecture: its layout and its preprocessing.
# Everything else (licence, paper, test-time size, description, sources) describes one set of
# weights, and is kept only when the folder holds those very weights; pool_size too, as it holds
# for the original input size only.
ARCHITECTURE_KEYS = (
    'input_size',
    'fixed_input_size',
    'min_input_size',
    'interpolation',
    'crop_pct',
    'crop_mode',
    'mean',
    'std',
    'num_classes',
    'first_conv',
    'classifier',
)
# Where weights came from: never true of an exported folder (timm would fetch from there instead).
SOURCE_KEYS = (
    'url',
    'file',
    'hf_hub_id',
    'hf_hub_filename',
    'hf_hub_revision',
    'source',
    'state_dict',
    'tag',
)


def exported_cfg(cfg: Mapping, *, trained: bool, license: str | None = None) -> dict:
    """The ``pretrained_cfg`` an export writes to config.json: no weight source; for ``trained`` weights
    (a training run, a random initialisation) only :data:`ARCHITECTURE_KEYS`, since the inherited
    licence, paper ids and test-time size describe other weights; ``license`` replaces the licence
    (``None`` on trained weights: none is stated)."""
    out = {k: v for k, v in cfg.items() if k not in SOURCE_KEYS and (not trained or k in ARCHITECTURE_KEYS)}
    if license:
        out['license'] = license
    return out


def _preprocessing_line(cfg: Mapping) -> str:
    size = 'x'.join(str(s) for s in cfg.get('input_size', ())) or 'unknown'
    parts = [f'input {size}']
    if cfg.get('interpolation'):
        parts.append(f'{cfg["interpolation"]} resize')
    if cfg.get('crop_pct') is not None:
        parts.append(f'crop_pct {cfg["crop_pct"]}')
    if cfg.get('mean') is not None:
        parts.append(f'mean {list(cfg["mean"])}, std {list(cfg.get("std") or [])}')
    return ', '.join(parts)


def _generated_card(
    architecture: str,
    num_features: int,
    *,
    about: str | None = None,
    license: str | None = None,
    folder: str | None = None,
    cfg: Mapping | None = None,
    tags: Sequence[str] = (),
) -> str:
    """A card for a backbone without a hand-written card: a training export, a random initialisation,
    a copy of another timm model. It states only what the caller knows (``about``, ``license``)."""
    needs = architecture in NEEDS_MTDP_HUB
    load = 'import timm\n' + ('import mtdp_hub  # registers ' + architecture + '\n' if needs else '')
    where = f'local-dir:{folder}' if folder else 'local-dir:PATH/TO/THIS/FOLDER'
    licence = (
        f'Licence: `{license}`.'
        if license
        else 'Licence: unknown (none is stated for these weights); set one here and in config.json before publishing.'
    )
    meta_tags = ''.join(f'- {t}\n' for t in ('image-feature-extraction', 'timm', *tags))
    needs_line = (
        '\nLoading this folder needs `pip install mtdp-hub` and `import mtdp_hub` first: the architecture '
        "is not one of timm's own.\n"
        if needs
        else ''
    )
    return f"""---
library_name: timm
license: {license or 'other'}
pipeline_tag: image-feature-extraction
tags:
{meta_tags}---
# {architecture} backbone

{about or f'A `{architecture}` backbone exported by mtdp-hub.'}
It returns pooled {num_features}-d features (`num_classes=0`); preprocessing: {_preprocessing_line(cfg or {})}.

{licence}

```python
{load}model = timm.create_model('{where}', pretrained=True)
# once uploaded with `mtdp push`: timm.create_model('hf-hub:ORG/NAME', pretrained=True), ORG/NAME being your repo
cfg = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**cfg)
```
{needs_line}"""


def card_text(name: str) -> str | None:
    """The hand-written card ``model_cards/<name>.md`` with its includes resolved, or ``None``."""
    cards = resources.files(_CARDS_PACKAGE)
    card_file = cards / f'{name}.md'
    if not card_file.is_file():
        return None
    return _INCLUDE.sub(
        lambda m: (cards / m['name']).read_text(encoding='utf-8').strip(),
        card_file.read_text(encoding='utf-8'),
    )


def render_card(
    model_name: str | None,
    architecture: str,
    num_features: int,
    card_extra: str | None = None,
    **generated: Any,
) -> str:
    """The card of a released model (``model_cards/<arch>.md`` for ``model_name`` = ``arch.tag``, with
    its includes), else a card generated for ``architecture`` (``generated``: the keyword arguments of
    that card: ``about``, ``license``, ``folder``, ``cfg``, ``tags``)."""
    card = card_text(model_name.split('.')[0]) if model_name else None
    if card is None:
        card = _generated_card(architecture, num_features, **generated)
    if card_extra:
        card = card.rstrip() + '\n\n' + card_extra.strip() + '\n'
    return card


def export_folder(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    heads: Mapping[str, nn.Linear] | None = None,
    class_names: Mapping[str, Sequence[str]] | None = None,
    card_extra: str | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
    about: str | None = None,
    trained: bool = False,
    license: str | None = None,
    tags: Sequence[str] = (),
) -> Path:
    """Export ``model`` (a timm model) and optional task heads as a Hugging Face model folder.

    Args:
        model: a timm model; its ``pretrained_cfg`` (preprocessing, licence, ...) goes into config.json,
            without its weight sources (see :func:`exported_cfg`).
        out_dir: the folder to create.
        heads: task name -> linear head, saved in ``heads.safetensors``.
        class_names: task name -> class names, stored with the heads.
        card_extra: Markdown appended to the model card (a run's pool, metrics, settings).
        model_name: the released model (``arch.tag``) whose card from ``model_cards/`` to use;
            by default a card is generated (a newly trained backbone is not a released model).
        overwrite: replace an existing folder; never the one (or one above) the model's weights
            came from (``pretrained_cfg['file']``, e.g. a ``local-dir:`` folder).
        about: the generated card's description of the weights (what they are, where they came from).
        trained: the weights are not those ``pretrained_cfg`` describes (trained here, or a random
            initialisation): config.json keeps only its architecture and preprocessing keys.
        license: the weights' licence (default: the ``pretrained_cfg``'s for a copy, unknown for
            ``trained`` weights), stated in config.json and in the card's metadata alike.
        tags: extra tags of the generated card.
    Returns:
        the folder's path.
    """
    out_dir = Path(out_dir)
    recover_dir(out_dir)  # a folder a killed export left renamed aside
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if isinstance(cfg.get('file'), (str, os.PathLike)):
        refuse_output_holding(out_dir, cfg['file'], 'the weights the model was loaded from')
    if out_dir.exists() and not overwrite:
        raise OutputExistsError(f'{out_dir} exists; pass overwrite=True (--overwrite) to replace it')
    architecture = cfg.get('architecture') or type(model).__name__.lower()
    export_arch = PLAIN_TIMM_ARCHITECTURE.get(architecture, architecture)
    license = license or (None if trained else cfg.get('license'))

    # safetensors needs contiguous CPU tensors: export a copy, leave the caller's model as it is.
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    with atomic_replace_dir(out_dir) as tmp:
        save_for_hf(model, tmp, model_config={'architecture': export_arch}, safe_serialization=True)
        config = json.loads((tmp / 'config.json').read_text())
        config['pretrained_cfg'] = exported_cfg(config['pretrained_cfg'], trained=trained, license=license)
        (tmp / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
        if heads:
            save_heads(tmp / HEADS_FILE, heads, class_names)
        card = render_card(
            model_name,
            export_arch,
            model.num_features,
            card_extra,
            about=about,
            license=license,
            folder=str(out_dir),
            cfg=config['pretrained_cfg'],
            tags=tags,
        )
        (tmp / 'README.md').write_text(card)
    return out_dir


def folder_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every weight file in an exported folder."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob('*.safetensors'))}
