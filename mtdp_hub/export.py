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
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .weights import sha256_file

__all__ = ['export_folder', 'save_heads', 'load_heads', 'render_card', 'PLAIN_TIMM_ARCHITECTURE', 'CARDS_DIR']

# Exported under a plain timm architecture when the weights and forward pass are exactly timm's,
# so that timm (and tools built on it) load the folder without this package.
PLAIN_TIMM_ARCHITECTURE = {'mtdp_resnet50': 'resnet50'}
# Architectures whose forward differs from plain timm: loading them needs ``import mtdp_hub``.
NEEDS_MTDP_HUB = ('mtdp_densenet121',)

CARDS_DIR = Path(__file__).resolve().parent.parent / 'model_cards'
_INCLUDE = re.compile(r'<!--\s*include:\s*(?P<name>[\w.-]+)\s*-->')
HEADS_FILE = 'heads.safetensors'


def save_heads(
        path: str | os.PathLike,
        heads: Mapping[str, nn.Linear],
        class_names: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """Save task heads as ``<task>.weight`` / ``<task>.bias`` with task names and classes as metadata."""
    tensors, tasks = {}, []
    for name, head in heads.items():
        if not isinstance(head, nn.Linear):
            raise TypeError(f'head {name!r} must be an nn.Linear, got {type(head).__name__}')
        tensors[f'{name}.weight'] = head.weight.detach().cpu().contiguous()
        tensors[f'{name}.bias'] = head.bias.detach().cpu().contiguous()
        classes = list((class_names or {}).get(name, []))
        if classes and len(classes) != head.out_features:
            raise ValueError(f'head {name!r} has {head.out_features} outputs but {len(classes)} class names')
        tasks.append({'name': name, 'num_classes': head.out_features, 'classes': classes})
    save_file(tensors, str(path), metadata={'format': 'mtdp-heads-v1', 'tasks': json.dumps(tasks)})


def load_heads(path: str | os.PathLike) -> tuple[dict[str, nn.Linear], dict[str, list[str]]]:
    """Read a heads file back: ``{task: nn.Linear}`` and ``{task: class names}``."""
    with safe_open(str(path), framework='pt') as f:
        meta = f.metadata() or {}
        if meta.get('format') != 'mtdp-heads-v1':
            raise ValueError(f'{path}: not an mtdp heads file (metadata format={meta.get("format")!r})')
        tasks = json.loads(meta['tasks'])
        heads, classes = {}, {}
        for task in tasks:
            weight, bias = f.get_tensor(f"{task['name']}.weight"), f.get_tensor(f"{task['name']}.bias")
            head = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            heads[task['name']] = head
            classes[task['name']] = task['classes']
    return heads, classes


def _generated_card(architecture: str, num_features: int) -> str:
    """A card for a backbone that has no hand-written card (e.g. one trained with ``training/``)."""
    needs = architecture in NEEDS_MTDP_HUB
    load = "import timm\n" + ("import mtdp_hub  # registers " + architecture + "\n" if needs else "")
    return f"""---
library_name: timm
license: mit
pipeline_tag: image-feature-extraction
tags:
- image-feature-extraction
- timm
- pathology
- histology
- multi-task
---
# {architecture} multi-task pathology backbone

A `{architecture}` backbone trained with multi-task pre-training on pathology patches
(the recipe of Mormont, Geurts and Maree, IEEE JBHI 2021, arXiv:2005.02561), exported by mtdp-hub.
It returns pooled {num_features}-d features (`num_classes=0`).

```python
{load}model = timm.create_model('hf-hub:ORG/NAME', pretrained=True)  # or 'local-dir:/path/to/this/folder'
cfg = timm.data.resolve_data_config(model=model)
transform = timm.data.create_transform(**cfg)
```
{"Loading this folder needs `pip install mtdp-hub` and `import mtdp_hub` first: the architecture "
 "is not one of timm's own." if needs else ""}
"""


def render_card(model_name: str | None, architecture: str, num_features: int, card_extra: str | None = None) -> str:
    """The card of a released model (``model_cards/<arch>.md`` for ``model_name`` = ``arch.tag``, with
    its includes), else a card generated for ``architecture``."""
    card_file = CARDS_DIR / f"{model_name.split('.')[0]}.md" if model_name else None
    if card_file is not None and card_file.is_file():
        card = _INCLUDE.sub(lambda m: (CARDS_DIR / m['name']).read_text().strip(), card_file.read_text())
    else:
        card = _generated_card(architecture, num_features)
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
) -> Path:
    """Export ``model`` (a timm model) and optional task heads as a Hugging Face model folder.

    Args:
        model: a timm model; its ``pretrained_cfg`` (preprocessing, licence, ...) goes into config.json.
        out_dir: the folder to create.
        heads: task name -> linear head, saved in ``heads.safetensors``.
        class_names: task name -> class names, stored with the heads.
        card_extra: Markdown appended to the model card (a run's pool, metrics, settings).
        model_name: the released model (``arch.tag``) whose card from ``model_cards/`` to use;
            by default a card is generated (a newly trained backbone is not a released model).
        overwrite: replace an existing folder.
    Returns:
        the folder's path.
    """
    from timm.models import save_for_hf

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f'{out_dir} exists; pass overwrite=True (--overwrite) to replace it')
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    architecture = cfg.get('architecture') or type(model).__name__.lower()
    export_arch = PLAIN_TIMM_ARCHITECTURE.get(architecture, architecture)

    # safetensors needs contiguous CPU tensors: export a copy, leave the caller's model as it is.
    model = copy.deepcopy(model).cpu().to(memory_format=torch.contiguous_format)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f'.{out_dir.name}.partial-'))
    try:
        save_for_hf(model, tmp, model_config={'architecture': export_arch}, safe_serialization=True)
        config = json.loads((tmp / 'config.json').read_text())
        config['pretrained_cfg'].pop('tag', None)  # a tag names a registry row, not this folder
        (tmp / 'config.json').write_text(json.dumps(config, indent=2) + '\n')
        if heads:
            save_heads(tmp / HEADS_FILE, heads, class_names)
        (tmp / 'README.md').write_text(render_card(model_name, export_arch, model.num_features, card_extra))
        # Swap with renames only, so a kill at any point leaves the old or the new folder in place.
        old = out_dir.with_name(f'.{out_dir.name}.old-{os.getpid()}') if out_dir.exists() else None
        if old is not None:
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def folder_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """SHA-256 of every weight file in an exported folder."""
    return {p.name: sha256_file(p) for p in sorted(Path(folder).glob('*.safetensors'))}
