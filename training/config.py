"""Run configuration: dataclasses with the paper's defaults, strict YAML loading, overrides.

A config file has the sections of :class:`Config` (``pool``, ``data``, ``model``, ``optim``,
``schedule``, ``run``); a key that is not a field is an error naming it. ``--set a.b=value``
overrides one field (the value is parsed as YAML). YAML anchors and aliases are refused
(:func:`load_yaml`), and a float field reads ``1e-4`` as a number. The resolved config is saved in the run
folder as ``config.yaml`` and reloads to the same :class:`Config`.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from mtdp_hub.errors import MtdpError

__all__ = [
    'ConfigError',
    'DataConfig',
    'ModelConfig',
    'OptimConfig',
    'ScheduleConfig',
    'RunConfig',
    'Config',
    'load_config',
    'from_dict',
    'to_dict',
    'apply_overrides',
    'save_config',
    'load_yaml',
    'config_keys',
]

# A number in exponent form without a dot (1e-4, 5E3): YAML 1.1 reads it as a string.
_EXPONENT_FLOAT = re.compile(r'[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+')


class ConfigError(MtdpError, ValueError):
    """A config file or override that cannot be used; the message names the key."""


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses anchors and aliases (``&a`` / ``*a``): no billion laughs."""

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, 'anchor', None) is not None:
            raise yaml.composer.ComposerError(
                None, None, 'YAML anchors and aliases (&name, *name) are not allowed', event.start_mark
            )
        return super().compose_node(parent, index)


def load_yaml(text: str, where: str, error: type[Exception] = ConfigError) -> Any:
    """Parse one YAML document safely (no anchors/aliases); a problem raises ``error`` naming ``where``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)
    except yaml.YAMLError as e:
        raise error(f'cannot read {where}: {e}') from None


@dataclass
class DataConfig:
    size: int = 224  # network input side (paper: not stated; 224 as the code)
    batch_size: int = 64  # global batch, split over the ranks
    eval_batch_size: int = 128  # per rank, validation
    num_workers: int = 8  # DataLoader workers per rank
    pin_memory: bool = True  # only used on CUDA
    persistent_workers: bool = True  # keep the DataLoader workers between passes
    prefetch_factor: int = 4  # batches loaded ahead per worker
    bad_images: str = 'error'  # 'error': stop before the first step | 'skip': drop and list them
    scan_images: bool = True  # decode every image before training (needed by both policies)
    # None: the pool file's own train_splits, else ['train']; a list here wins over the pool file's.
    train_splits: list[str] | None = None  # released models: train, val, test
    val_split: str = 'val'  # the split validated on (per task, where present)


@dataclass
class ModelConfig:
    arch: str = 'resnet50'  # any timm name: resnet50, densenet121, mtdp_resnet50, mtdp_densenet121, ...
    init: str = 'imagenet'  # 'imagenet' | 'random' | path to a weights file or an exported folder
    imagenet_weights: str | None = None  # timm name.tag; default <arch>.tv_in1k (torchvision's, as the paper)
    if_weights_missing: str = 'error'  # 'error' | 'random': what to do when ImageNet weights are unreachable


@dataclass
class OptimConfig:
    lr: float = 1e-3  # gamma, the backbone learning rate
    head_lr_mult: float = 1.0  # tau: heads learn at gamma * tau
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 0.0  # SGD weight decay (the paper: none)


@dataclass
class ScheduleConfig:
    iterations: int = 50_000  # in total, warm-up included
    warmup_iterations: int = 5_000  # head-only, backbone frozen (weights and BN statistics); 0 = none
    warmup_lr: float = 1e-3  # head LR during warm-up
    bn_recalibration_batches: int = 20  # 0 = no re-calibration
    val_every: int = 5_000  # 0 = only at the end
    checkpoint_every: int = 1_000  # iterations between checkpoints
    keep_checkpoints: int = 3  # the latest ones kept
    log_every: int = 50  # iterations between log lines (and non-finite checks on GPU)


@dataclass
class RunConfig:
    name: str | None = None  # default: the config file's stem
    output_dir: str = 'runs'  # the run folder is output_dir/name
    seed: int = 0  # sampling, augmentation and initial heads
    device: str = 'auto'  # 'auto' | 'cpu' | 'cuda'
    amp: str = 'auto'  # 'auto' (bf16 on CUDA when supported, else off) | 'bf16' | 'fp16' | 'none'
    channels_last: bool = True  # NHWC memory format (faster convolutions on GPU)
    compile: bool = False  # torch.compile the model
    export: bool = True  # export the backbone at the end
    progress: bool = True  # a tqdm bar on a terminal; a log line per log_every otherwise
    tensorboard: bool = True  # needs the tensorboard package (a warning when missing)
    resume: str = 'auto'  # 'auto': continue from the run folder's latest checkpoint | 'never'
    threads: int = 0  # torch.set_num_threads on CPU (0 = leave it)


@dataclass
class Config:
    pool: str | None = None  # a pool YAML file, or 'demo' for the built-in demo pool
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> Config:
        """Cross-field and range checks; raises :class:`ConfigError` naming the key."""
        checks = [
            (self.data.bad_images in ('error', 'skip'), "data.bad_images must be 'error' or 'skip'"),
            (
                self.model.if_weights_missing in ('error', 'random'),
                "model.if_weights_missing must be 'error' or 'random'",
            ),
            (
                self.run.amp in ('auto', 'bf16', 'fp16', 'none'),
                'run.amp must be one of auto, bf16, fp16, none',
            ),
            (self.run.resume in ('auto', 'never'), "run.resume must be 'auto' or 'never'"),
            (self.run.device in ('auto', 'cpu', 'cuda'), 'run.device must be auto, cpu or cuda'),
            (
                0 <= self.schedule.warmup_iterations <= self.schedule.iterations,
                'schedule.warmup_iterations must be between 0 and schedule.iterations',
            ),
        ]
        for key, low, high in _RANGES:
            section, name = key.split('.')
            value = getattr(getattr(self, section), name)
            if not _in_range(value, low, high):
                raise ConfigError(f'{key} must be in {_range_text(low, high)}, got {value!r}')
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


# Allowed ranges of the numeric fields: (key, low, high); low/high ``(bound, inclusive)`` or None.
_RANGES = [
    ('data.size', (1, True), None),
    ('data.batch_size', (1, True), None),
    ('data.eval_batch_size', (1, True), None),
    ('data.num_workers', (0, True), None),
    ('data.prefetch_factor', (1, True), None),
    ('optim.lr', (0, False), None),
    ('optim.head_lr_mult', (0, False), None),
    ('optim.momentum', (0, True), (1, False)),
    ('optim.weight_decay', (0, True), None),
    ('schedule.iterations', (1, True), None),
    ('schedule.warmup_lr', (0, False), None),
    ('schedule.bn_recalibration_batches', (0, True), None),
    ('schedule.val_every', (0, True), None),
    ('schedule.checkpoint_every', (1, True), None),
    ('schedule.keep_checkpoints', (1, True), None),
    ('schedule.log_every', (1, True), None),
    ('run.seed', (0, True), None),
    ('run.threads', (0, True), None),
]


def _in_range(value: float, low: tuple | None, high: tuple | None) -> bool:
    if value != value or value in (float('inf'), float('-inf')):  # nan, inf
        return False
    if low is not None and not (value >= low[0] if low[1] else value > low[0]):
        return False
    return high is None or (value <= high[0] if high[1] else value < high[0])


def _range_text(low: tuple | None, high: tuple | None) -> str:
    left = f'{"[" if low[1] else "("}{low[0]}' if low else '(-inf'
    right = f'{high[0]}{"]" if high[1] else ")"}' if high else 'inf)'
    return f'{left}, {right}'


# Keys that were removed: key -> (the value still accepted with a warning, or None; why; what to do).
REMOVED_KEYS = {
    'data.decode': (
        'cpu',
        "JPEG decoding on the GPU was removed: torchvision's nvJPEG batch decoder does not wait for the "
        'work already queued on its CUDA stream and can write its output into memory that queued kernels '
        'still read, which corrupted activations (a non-finite loss after BN re-calibration); the only safe '
        'fix, a host sync before every decode, made it slower than decoding in the DataLoader workers',
        'remove data.decode from the config (and any --set data.decode=...): images are always decoded '
        'and augmented to uint8 in the DataLoader workers and normalised on the device',
    ),
}


def _removed_key(key: str, value: Any) -> bool:
    """``True`` when ``key`` was removed and ``value`` only restates what now always happens (a warning
    says to drop it); raises :class:`ConfigError` saying why and what to do when ``value`` asks for
    the removed behaviour."""
    if key not in REMOVED_KEYS:
        return False
    accepted, why, fix = REMOVED_KEYS[key]
    if accepted is not None and value == accepted:
        warnings.warn(
            f'{key}: {value} is ignored and will be refused in a later version; {fix}',
            FutureWarning,
            stacklevel=3,
        )
        return True
    raise ConfigError(f'{key}: {value!r} is no longer supported. {why}. To fix: {fix}.')


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check/convert one YAML value against a field's type hint."""
    if dataclasses.is_dataclass(hint):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a mapping, got {value!r}')
        return from_dict(value, hint, where)
    text = str(hint)
    if value is None:
        if 'None' in text:
            return None
        raise ConfigError(f'{where}: must not be empty')
    if hint is bool or text.startswith('bool'):
        if not isinstance(value, bool):
            raise ConfigError(f'{where}: expected true/false, got {value!r}')
        return value
    if hint is int or text.startswith('int'):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f'{where}: expected an integer, got {value!r}')
        return value
    if hint is float or text.startswith('float'):
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f'{where}: expected a number, got {value!r}')
        return float(value)
    if text.startswith('list'):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f'{where}: expected a list, got {value!r}')
        return [str(v) for v in value]
    if isinstance(value, (dict, list)):
        raise ConfigError(f'{where}: expected a single value, got {value!r}')
    return str(value)


def from_dict(values: dict, cls: type = Config, where: str = '') -> Any:
    """Build ``cls`` from a plain dict; an unknown key raises :class:`ConfigError` naming it."""
    hints = get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {k: v for k, v in values.items() if not _removed_key(f'{where}.{k}' if where else k, v)}
    for key in values:
        if key not in names:
            full = f'{where}.{key}' if where else key
            raise ConfigError(f'unknown config key {full!r}; known keys here: {", ".join(names)}')
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _convert(values[name], hints[name], f'{where}.{name}' if where else name)
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``section.key=value`` strings (values parsed as YAML) and return a new Config."""
    values = to_dict(cfg)
    for item in overrides or []:
        if '=' not in item:
            raise ConfigError(f'override {item!r} must look like section.key=value')
        dotted, raw = item.split('=', 1)
        parts = dotted.strip().split('.')
        if _removed_key(dotted.strip(), load_yaml(raw, f'override {item!r}') if raw.strip() else None):
            continue
        node = values
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f'unknown config key {".".join(parts[: i + 1])!r} in override {item!r}')
            if i == len(parts) - 1:
                node[part] = load_yaml(raw, f'override {item!r}') if raw.strip() else None
            else:
                node = node[part]
    return from_dict(values).validate()


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults, then the YAML file (strict), then the overrides. The run name defaults to the file stem."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f'cannot read config {path}: {e}') from e
        values = load_yaml(text, f'config {path}') or {}
        if not isinstance(values, dict):
            raise ConfigError(f'{path}: a config file must be a mapping of sections')
        # A relative pool path is relative to the config file, unless it exists from here.
        pool = values.get('pool')
        if (
            isinstance(pool, str)
            and pool != 'demo'
            and not Path(pool).is_absolute()
            and not Path(pool).exists()
        ):
            values['pool'] = str(path.parent / pool)
    try:
        cfg = from_dict(values)
    except ConfigError as e:
        raise ConfigError(f'{path}: {e}' if path else str(e)) from None
    if cfg.run.name is None and path is not None:
        cfg.run.name = Path(path).stem
    return apply_overrides(cfg, overrides or [])


# Settings that shape the weights: a resumed run must keep them (iterations, logging, checkpoint
# cadence, workers and the like may change).
RESUME_FIXED = (
    'pool',
    'model.',
    'optim.',
    'data.size',
    'data.batch_size',
    'data.train_splits',
    'schedule.warmup_iterations',
    'schedule.warmup_lr',
    'schedule.bn_recalibration_batches',
    'run.seed',
)


def _flatten(values: dict, prefix: str = '') -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f'{prefix}{key}.'))
        else:
            flat[f'{prefix}{key}'] = value
    return flat


def resume_changes(saved: dict, current: Config) -> list[str]:
    """The settings of ``current`` that differ from a checkpoint's ``saved`` config, as ``key: old -> new``."""
    old, new = _flatten(saved), _flatten(to_dict(current))
    keys = sorted(k for k in old.keys() | new.keys() if k == 'pool' or k.startswith(RESUME_FIXED))
    return [f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in keys if old.get(k) != new.get(k)]


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (reloads with :func:`load_config` to an equal Config)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _field_comments(cls: type) -> dict[str, str]:
    """The ``# comment`` after each field in the class source: the keys' one-line help."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r'\s+(\w+): [^=]+=.*?#\s*(.*)$', line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def config_keys() -> list[tuple[str, Any, str]]:
    """Every key ``--set`` accepts: ``(section.key, default, help)``, from the dataclasses above."""
    keys = []
    top = Config()
    for f in dataclasses.fields(Config):
        section = getattr(top, f.name)
        if not dataclasses.is_dataclass(section):
            keys.append((f.name, section, _field_comments(Config).get(f.name, '')))
            continue
        comments = _field_comments(type(section))
        for g in dataclasses.fields(section):
            keys.append((f'{f.name}.{g.name}', getattr(section, g.name), comments.get(g.name, '')))
    return keys
