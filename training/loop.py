"""The training run, top to bottom: open the run folder -> pool and data -> model and step ->
resume or BN re-calibration -> warm-up + training (checkpoints, validation) -> export.

Single process: ``python -m training --config ...``. Many devices / nodes: ``torchrun ... -m
training ...`` (one process per device; the global batch is split over the ranks, the head
gradient scaling uses the global task counts, so the recipe does not depend on the GPU count).
A run folder ``{run.output_dir}/{run.name}`` holds ``config.yaml``, ``checkpoints/``,
``metrics.csv``, ``log.txt``, ``summary.json`` and ``export/``. Started again on the same folder,
a run continues from its latest checkpoint (``run.resume: auto``): this is also what makes
torchrun's elastic restarts (``--max-restarts``) pick up where a dead rank left the job.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from mtdp_hub import _io
from mtdp_hub.errors import MtdpError
from mtdp_hub.features.pixels import Normalise
from mtdp_hub.features.runtime import autocast_dtype, cpu_share

from . import checkpoint as ckpt
from .config import Config, ConfigError, resume_changes, save_config, to_dict
from .data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    BadImagesError,
    MultiTaskDataset,
    apply_bad_image_policy,
    scan_pool,
)
from .demo import make_demo_pool
from .distributed import Dist, setup, teardown
from .export import export_checkpoint, export_run
from .guards import InputWatch, NonFiniteBatchError, checked_recalibration_batches
from .model import MultiTaskNet, create_backbone, set_training_preprocessing
from .monitor import Monitor
from .pool import TaskPool, load_pool
from .preflight import RunFolderError, check_run_folder, imagenet_init
from .recipe import lr_lambdas, recalibrate_batchnorm, sgd
from .sampler import TaskUniformSampler
from .state import (
    restore_run_state,
    rng_state,
    run_state,
    seed_everything,
    set_rng_state,
    weights_fingerprint,
)
from .step import LossWatch, NonFiniteLossError, TrainStep
from .validation import check_export, evaluate, validate

__all__ = [
    'main',
    'run_dir_of',
    'NonFiniteLossError',
    'NonFiniteBatchError',
    'TrainingInterrupted',
    'RunLockedError',
    'RunFolderError',
    'recalibrate',
    'BadImagesError',
    'export_run',
    'export_checkpoint',
    'evaluate',
]


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved and the run stopped cleanly."""

    def __init__(self, signum: int, iteration: int, path: Path | None):
        self.signum, self.iteration, self.path = signum, iteration, path
        super().__init__(
            f'stopped by {signal.Signals(signum).name} at iteration {iteration}; checkpoint {path}'
        )


class RunLockedError(MtdpError, RuntimeError):
    """Another live run uses the run folder (its ``.lock`` names the process)."""


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or 'run')


def _fault_point(d: Dist, iteration: int) -> None:
    """Test hook (fault injection), inactive unless ``MTDP_TRAINING_FAULT`` is set, on the first attempt only:
    ``RANK:ITERATION`` SIGKILLs that rank after that iteration; ``save:ITERATION`` SIGKILLs the main
    rank in the middle of writing that iteration's checkpoint (temporary file written, not renamed)."""
    spec = os.environ.get('MTDP_TRAINING_FAULT')
    if not spec or os.environ.get('TORCHELASTIC_RESTART_COUNT', '0') != '0':
        return
    where, it = spec.split(':')
    if int(it) != iteration:
        return
    if where == 'save':
        _io.before_rename = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
    elif int(where) == d.rank:
        os.kill(os.getpid(), signal.SIGKILL)


def build_pool(cfg: Config, run_dir: Path, d: Dist) -> TaskPool:
    if cfg.pool is None:
        raise ConfigError(
            'no pool: give --pool POOL.yaml or set "pool:" in the config (pool: demo for the demo)'
        )
    if cfg.pool == 'demo':
        if d.is_main:
            make_demo_pool(run_dir / 'demo_pool')
        d.barrier()
        return load_pool(run_dir / 'demo_pool' / 'pool.yaml', cfg.data.train_splits, cfg.data.val_split)
    return load_pool(cfg.pool, cfg.data.train_splits, cfg.data.val_split)


def main(cfg: Config) -> dict:
    """Train as ``cfg`` says; returns the run summary (also written to ``summary.json``)."""
    d = setup(cfg.run.device)
    try:
        return _train(cfg, d)
    finally:
        teardown(d)


# --- the stages of a run ---------------------------------------------------------------------------
@dataclass
class _Run:
    """The run folder and what the stages share."""

    dir: Path
    monitor: Monitor
    resume: dict | None
    started: float = field(default_factory=time.time)

    @property
    def checkpoints(self) -> Path:
        return self.dir / 'checkpoints'


@dataclass
class _Data:
    pool: TaskPool
    train_set: MultiTaskDataset
    sampler: TaskUniformSampler
    per_rank_batch: int
    loader_kw: dict
    skipped: list[str]
    normalise: Normalise  # uint8 batches from the workers -> normalised float on the device

    def names(self, draws) -> list[str]:
        """The images of ``(flat_index, seed)`` draws, for messages."""
        return [self.train_set.describe(flat) for flat, _ in draws]


def _open_run(cfg: Config, d: Dist) -> _Run:
    """Create the run folder and its monitor (``log.txt`` from here on)."""
    run_dir = run_dir_of(cfg)
    if cfg.run.threads and d.device.type == 'cpu':
        torch.set_num_threads(cfg.run.threads)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(run_dir / 'checkpoints')
    d.barrier()
    monitor = Monitor(run_dir, d.is_main, 0, cfg.schedule.iterations, cfg.run.progress, cfg.run.tensorboard)
    return _Run(run_dir, monitor, None)


def _resume_or_save_config(cfg: Config, d: Dist, run: _Run) -> None:
    """Find a checkpoint to resume from (``run.resume: auto``) and check it fits ``cfg``; save the config."""
    run_dir, monitor = run.dir, run.monitor
    if cfg.run.resume == 'auto':
        found = ckpt.latest_checkpoint(run.checkpoints, log=monitor.log)
        if found is not None:
            run.resume = found[1]
            changes = resume_changes(run.resume['config'], cfg)
            if changes:
                raise ConfigError(
                    f'{run_dir} was trained with other settings ({"; ".join(changes)}). Resume with '
                    f'its own config (python -m training --resume {run_dir}) or start another run '
                    '(--set run.name=NEW)'
                )
            if run.resume['iteration'] > cfg.schedule.iterations:
                raise ConfigError(
                    f'{found[0]} is at iteration {run.resume["iteration"]}, beyond schedule.iterations '
                    f'{cfg.schedule.iterations}: set schedule.iterations to at least {run.resume["iteration"]}, '
                    'or start another run (--set run.name=NEW)'
                )
            monitor.log(f'resuming from {found[0]} (iteration {run.resume["iteration"]})')
    elif ckpt.list_checkpoints(run.checkpoints):
        raise ConfigError(
            f'{run.checkpoints} holds checkpoints of an earlier run and run.resume is never: '
            'choose another run.name, or run.resume=auto to continue it'
        )
    if d.is_main:
        save_config(cfg, run_dir / 'config.yaml')


def _build_data(cfg: Config, d: Dist, run: _Run) -> _Data:
    """The pool (scanned for undecodable images), the training set and its task-uniform sampler."""
    if cfg.data.batch_size % d.world_size:
        raise ConfigError(
            f'data.batch_size {cfg.data.batch_size} is not divisible by the {d.world_size} ranks'
        )
    per_rank_batch = cfg.data.batch_size // d.world_size
    pool = build_pool(cfg, run.dir, d)
    skipped: list[str] = []
    if cfg.data.scan_images:
        splits = list(dict.fromkeys([*pool.train_splits, cfg.data.val_split]))
        report = (
            scan_pool(pool, splits, num_workers=cfg.data.num_workers, progress=cfg.run.progress)
            if d.is_main
            else None
        )
        report = d.broadcast_object(report)
        apply_bad_image_policy(pool, report, cfg.data.bad_images)  # 'error' raises before any step
        skipped = report.lines()
        if skipped:
            run.monitor.log(
                f'skipping {len(skipped)} undecodable image(s) (data.bad_images: skip):\n  '
                + '\n  '.join(skipped)
            )
    train_set = MultiTaskDataset(pool, pool.train_splits, cfg.data.size, cfg.data.bad_images)
    run.monitor.log(
        f'pool: {len(pool)} tasks, {len(train_set)} training images; '
        + ', '.join(
            f'{t.name} ({t.num_classes} cl., {n} img)' for t, n in zip(pool.tasks, train_set.task_sizes)
        )
    )
    sampler = TaskUniformSampler(
        train_set.task_sizes,
        cfg.run.seed,
        d.rank,
        d.world_size,
        num_draws=cfg.schedule.iterations * per_rank_batch,
    )
    loader_kw = dict(
        num_workers=cfg.data.num_workers,
        pin_memory=cfg.data.pin_memory and d.device.type == 'cuda',
    )
    if cfg.data.num_workers > 0:
        loader_kw.update(
            persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor
        )
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, d.device, _memory_format(cfg))
    return _Data(pool, train_set, sampler, per_rank_batch, loader_kw, skipped, normalise)


def _cap_workers(cfg: Config, log) -> Config:
    """``data.num_workers`` at most the CPUs available to each local rank (more only adds contention)."""
    local_ranks = int(os.environ.get('LOCAL_WORLD_SIZE', '1') or 1)
    cap = cpu_share()
    if cfg.data.num_workers <= cap:
        return cfg
    log(
        f'data.num_workers {cfg.data.num_workers} capped at {cap}: the CPUs available'
        + (f' to each of {local_ranks} local ranks' if local_ranks > 1 else '')
    )
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=cap))


def _build_backbone(cfg: Config, run: _Run) -> tuple[torch.nn.Module, dict]:
    """The backbone, before the pool is scanned: ImageNet weights that cannot be had stop the run in
    seconds, not after an image scan. Returns it with the RNG state after its creation, so that the
    heads are initialised as if nothing had run in between (identical on every rank)."""
    init = imagenet_init(cfg, run.resume is not None, run.monitor.log)
    seed_everything(cfg.run.seed)
    backbone = create_backbone(
        cfg.model.arch, init, cfg.model.imagenet_weights, cfg.model.if_weights_missing, log=run.monitor.log
    )
    set_training_preprocessing(backbone, cfg.data.size)
    return backbone, rng_state()


def _build_step(cfg: Config, d: Dist, data: _Data, backbone: torch.nn.Module, rng: dict) -> TrainStep:
    """Heads on ``backbone``, the model on the device, SGD with its warm-up schedule, the training step."""
    set_rng_state(rng)
    model = MultiTaskNet(backbone, {t.name: t.num_classes for t in data.pool.tasks})
    model.to(d.device, memory_format=_memory_format(cfg))
    opt, S = cfg.optim, cfg.schedule
    optimizer = sgd(model, opt.lr, opt.head_lr_mult, opt.momentum, opt.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambdas(S.warmup_iterations, S.warmup_lr, opt.lr, opt.head_lr_mult)
    )
    amp = autocast_dtype(cfg.run.amp, d.device)
    return TrainStep(
        model,
        optimizer,
        device=d.device,
        amp_dtype=amp,
        scheduler=scheduler,
        world_size=d.world_size,
        all_reduce=d.all_reduce_sum if d.enabled else None,
    )


def _memory_format(cfg: Config) -> torch.memory_format:
    return torch.channels_last if cfg.run.channels_last else torch.contiguous_format


def _start(cfg: Config, d: Dist, run: _Run, data: _Data, step: TrainStep) -> int:
    """Resume from the checkpoint, or re-calibrate BN on mixed-task batches; returns the first iteration."""
    if run.resume is not None:
        _check_same_pool(run.resume, data)
        start = restore_run_state(run.resume, step, data.sampler)
        run.monitor.resumed_at(start, finished=start == cfg.schedule.iterations)
        return start
    n_batches = cfg.schedule.bn_recalibration_batches
    if n_batches > 0:
        n = recalibrate(step.model.backbone, data, cfg.run.seed, n_batches, d)
        run.monitor.log(f'batch-norm re-calibration on {n} mixed-task batches')
    return 0


def recalibrate(backbone: torch.nn.Module, data: _Data, seed: int, n_batches: int, d: Dist) -> int:
    """BN re-calibration on ``n_batches`` mixed-task batches through the training data path (uint8 from
    the workers, normalised on the device), each batch checked (:mod:`training.guards`): a non-finite
    one raises naming its images, before any statistic is written. Returns the batch count."""
    # Mixed-task batches from a stream of their own (the training stream stays untouched).
    cal_sampler = TaskUniformSampler(
        data.train_set.task_sizes,
        seed + 7919,
        d.rank,
        d.world_size,
        num_draws=n_batches * data.per_rank_batch,
    )
    draws, B = list(cal_sampler), data.per_rank_batch
    batches = [draws[k : k + B] for k in range(0, len(draws), B)]
    cal_loader = DataLoader(
        data.train_set,
        batch_sampler=batches,
        num_workers=data.loader_kw['num_workers'],
        pin_memory=data.loader_kw['pin_memory'],
    )
    checked = checked_recalibration_batches(
        backbone,
        (data.normalise(x) for x, _, _ in cal_loader),
        [data.names(b) for b in batches],
        any_rank=d.any,
    )
    return recalibrate_batchnorm(backbone, checked, all_reduce=d.all_reduce_sum if d.enabled else None)


def _check_same_pool(state: dict, data: _Data) -> None:
    """Refuse to resume on a pool whose tasks, classes (their order gives the labels) or training image
    counts differ from the checkpoint's."""
    names = [t['name'] for t in state['tasks']]
    if names != data.pool.names:
        raise ConfigError(f'the checkpoint was trained on tasks {names}, the pool now has {data.pool.names}')
    fix = 'resume with the pool it was trained on, or start another run (--set run.name=NEW)'
    for saved, task in zip(state['tasks'], data.pool.tasks):
        if list(saved['classes']) != list(task.classes):
            raise ConfigError(
                f'task {task.name!r}: the checkpoint was trained with classes {list(saved["classes"])}, the '
                f'pool now has {list(task.classes)} (labels would change meaning); {fix}'
            )
    before = [int(n) for n in state['sampler']['task_sizes']]
    for name, old, new in zip(names, before, [int(n) for n in data.train_set.task_sizes]):
        if old != new:
            raise ConfigError(
                f'task {name!r}: the checkpoint was trained on {old} training images, the pool now has {new}; {fix}'
            )


@contextlib.contextmanager
def _signals():
    """Record SIGTERM / SIGINT instead of dying, so that the loop can save and stop cleanly."""
    stop = {'signum': None}

    def on_signal(signum, frame):
        stop['signum'] = signum

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _set_phase(cfg: Config, d: Dist, step: TrainStep, frozen: bool, iteration: int, log) -> None:
    """Head-only warm-up (backbone frozen, BN in eval mode) or the whole network; DDP must see which
    parameters learn, so the forward wrapper is rebuilt at each phase change."""
    model = step.model
    model.freeze_backbone() if frozen else model.unfreeze_backbone()
    model.train()
    forward = model
    if d.enabled:
        forward = DistributedDataParallel(
            model, device_ids=[d.device.index] if d.device.type == 'cuda' else None
        )
    step.forward = torch.compile(forward) if cfg.run.compile else forward
    log(
        f'iteration {iteration}: '
        + ('head-only warm-up (backbone frozen, BN in eval mode)' if frozen else 'training the whole network')
    )


def _lock_run(run_dir: Path, d: Dist) -> Path | None:
    """Check that the run folder is writable and take ``run_dir/.lock`` (pid and host inside) on the main
    rank for the whole run; a lock left by a dead process on this host is taken over. Every rank raises
    :class:`RunFolderError` / :class:`RunLockedError` when the folder cannot be written / is in use."""
    lock, error = None, None
    if d.is_main:
        try:
            check_run_folder(run_dir)
        except RunFolderError as e:
            error = ('folder', str(e))
        else:
            lock, holder = _io.try_lock(run_dir / '.lock')
            if lock is None:
                error = (
                    'lock',
                    f'{run_dir} is used by another run ({holder}); wait for it to end, or choose another '
                    f'run.name (remove {run_dir / ".lock"} only if no run uses the folder)',
                )
    error = d.broadcast_object(error) if d.enabled else error
    if error:
        raise (RunFolderError if error[0] == 'folder' else RunLockedError)(error[1])
    return lock


def _train(cfg: Config, d: Dist) -> dict:
    lock = _lock_run(run_dir_of(cfg), d)
    try:
        run = _open_run(cfg, d)
        try:
            _resume_or_save_config(cfg, d, run)
            cfg = _cap_workers(cfg, run.monitor.log)
            backbone, rng = _build_backbone(cfg, run)  # before the image scan: it fails fast
            data = _build_data(cfg, d, run)
            step = _build_step(cfg, d, data, backbone, rng)
            start = _start(cfg, d, run, data, step)
            with _signals() as stop:
                metrics = _iterate(cfg, d, run, data, step, start, stop)
                return _finish(cfg, d, run, data, step, start, metrics, stop)
        except TrainingInterrupted as e:
            run.monitor.log_file(str(e))
            raise
        except MtdpError as e:
            run.monitor.log_file(f'error: {e}')  # the console gets it from the command line
            raise
        except Exception:
            run.monitor.log_file(traceback.format_exc().rstrip())
            raise
        finally:
            run.monitor.close()
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


def _iterate(cfg: Config, d: Dist, run: _Run, data: _Data, step: TrainStep, start: int, stop: dict) -> dict:
    """Steps ``start`` .. ``iterations``: log, validate, checkpoint, stop on a signal; returns the last metrics."""
    S, log = cfg.schedule, run.monitor.log
    metrics: dict[str, float] = run.resume.get('metrics', {}) if run.resume else {}
    extra = {
        'config': to_dict(cfg),
        'tasks': _tasks_meta(data.pool),
        'pool_markdown': data.pool.summary_markdown(),
        'world_size': d.world_size,
    }

    def save(iteration: int) -> Path | None:
        state = run_state(iteration, step, data.sampler, data.per_rank_batch, metrics=metrics, **extra)
        path = (
            ckpt.save_checkpoint(state, run.checkpoints, iteration, S.keep_checkpoints) if d.is_main else None
        )
        d.barrier()
        return path

    data.sampler.position = start * data.per_rank_batch
    batches = iter(
        DataLoader(
            data.train_set,
            batch_size=data.per_rank_batch,
            sampler=data.sampler,
            drop_last=True,
            **data.loader_kw,
        )
    )
    watch = LossWatch(len(data.pool), d.device)
    inputs = InputWatch(data.per_rank_batch, d.device)

    def images_of(iteration: int) -> list[str]:
        return data.names(data.sampler.draws((iteration - 1) * data.per_rank_batch, data.per_rank_batch))

    t_last, frozen = time.time(), None
    if d.is_main and run.monitor.bar is not None:
        run.monitor.bar.n = start
    for it in range(start, S.iterations):
        if (it < S.warmup_iterations) != frozen:
            frozen = it < S.warmup_iterations
            _set_phase(cfg, d, step, frozen, it, log)
        x, y, t = next(batches)
        x = data.normalise(x)
        iteration = it + 1
        inputs.add(x, iteration)
        loss, counts = step(x, y.to(d.device, non_blocking=True), t.to(d.device, non_blocking=True))
        watch.add(loss, counts, iteration)
        _fault_point(d, iteration)

        is_log = iteration % S.log_every == 0 or iteration == S.iterations
        is_ckpt = iteration % S.checkpoint_every == 0 or iteration == S.iterations
        is_val = bool(S.val_every) and iteration % S.val_every == 0 and iteration < S.iterations
        stopping = stop['signum'] is not None
        if is_log or is_ckpt or d.device.type == 'cpu' or (stopping and not d.enabled):
            inputs.check(d.any, images_of)  # a bad input explains a bad loss: named first
            watch.check(d.any, data.pool.names, iteration, ckpt.list_checkpoints(run.checkpoints))
        if is_log:
            now = time.time()
            images_per_s = watch.steps * data.per_rank_batch * d.world_size / max(now - t_last, 1e-9)
            mean_loss = watch.take_mean()
            run.monitor.scalars(
                iteration,
                {
                    'train/loss': mean_loss,
                    'train/images_per_s': images_per_s,
                    'train/lr_backbone': step.optimizer.param_groups[0]['lr'],
                    'train/lr_heads': step.optimizer.param_groups[1]['lr'],
                },
            )
            run.monitor.progress(iteration, mean_loss, images_per_s)
            t_last = now
        if is_val:
            metrics = validate(step.model, data.pool, cfg, d, step.amp_dtype, iteration, run.monitor)
        if (is_log or not d.enabled) and d.any(bool(stop['signum'])):
            raise TrainingInterrupted(stop['signum'] or signal.SIGTERM, iteration, save(iteration))
        if is_ckpt:
            save(iteration)
    return metrics


def _tasks_meta(pool: TaskPool) -> list[dict]:
    return [{'name': t.name, 'classes': t.classes} for t in pool.tasks]


def _finish(
    cfg: Config, d: Dist, run: _Run, data: _Data, step: TrainStep, start: int, metrics: dict, stop: dict
) -> dict:
    """Final validation, the weights' fingerprint on every rank, export, ``summary.json``. A signal that
    arrived until the end of the final validation stops the run there (its last checkpoint holds all)."""
    model = step.model
    if d.enabled:  # DDP broadcasts rank 0's BN statistics before each forward; do it once more
        for buffer in model.buffers():
            torch.distributed.broadcast(buffer, src=0)
    iterations = cfg.schedule.iterations
    metrics = validate(model, data.pool, cfg, d, step.amp_dtype, iterations, run.monitor)
    if d.any(bool(stop['signum'])):
        path = run.checkpoints / f'ckpt-{iterations:09d}.pt'
        raise TrainingInterrupted(stop['signum'] or signal.SIGTERM, iterations, path)
    fingerprint = weights_fingerprint(model)
    fingerprints = [fingerprint]
    if d.enabled:
        fingerprints = [None] * d.world_size
        torch.distributed.all_gather_object(fingerprints, fingerprint)
    tasks_meta = _tasks_meta(data.pool)
    summary = {
        'run_dir': str(run.dir),
        'iterations': cfg.schedule.iterations,
        'resumed_from': start if run.resume else None,
        'weights_sha256': fingerprint,
        'rank_weights_sha256': fingerprints,
        'metrics': metrics,
        'skipped_images': data.skipped,
        'wall_time_s': round(time.time() - run.started, 1),
        'world_size': d.world_size,
        'tasks': tasks_meta,
    }
    if d.is_main:
        if cfg.run.export:
            export_dir = export_run(
                model,
                tasks_meta,
                run.dir / 'export',
                to_dict(cfg),
                metrics,
                data.pool.summary_markdown(),
                cfg.schedule.iterations,
            )
            summary['export'] = str(export_dir)
            run.monitor.log(f'exported the backbone to {export_dir}')
            if cfg.pool == 'demo':
                summary['export_metrics'] = check_export(
                    export_dir, data.pool, cfg.data.val_split, run.monitor.log
                )
        _io.atomic_write_text(run.dir / 'summary.json', json.dumps(summary, indent=2) + '\n')
    d.barrier()
    return summary
