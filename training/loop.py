"""The training run, top to bottom: setup -> pool -> data -> model -> BN re-calibration ->
warm-up + training (checkpoints, validation) -> export.

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
import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from . import checkpoint as ckpt
from .config import Config, ConfigError, resume_changes, save_config, to_dict
from .data import (
    BadImagesError,
    DeviceAugment,
    EncodedMultiTaskDataset,
    MultiTaskDataset,
    SplitDataset,
    apply_bad_image_policy,
    collate_encoded,
    scan_pool,
)
from .distributed import Dist, setup, teardown
from .model import MultiTaskNet, create_backbone, set_training_preprocessing
from .monitor import Monitor
from .pool import TaskPool, load_pool
from .recipe import (
    lr_lambdas,
    multitask_loss,
    param_groups,
    recalibrate_batchnorm,
    rescale_head_grads,
    task_counts,
)
from .sampler import TaskUniformSampler

__all__ = ['main', 'run_dir_of', 'NonFiniteLossError', 'TrainingInterrupted', 'BadImagesError', 'export_run', 'evaluate']


class NonFiniteLossError(RuntimeError):
    """The loss became NaN/inf; the run stops and its last good checkpoint stays the latest."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved and the run stopped cleanly."""

    def __init__(self, signum: int, iteration: int, path: Path | None):
        self.signum, self.iteration, self.path = signum, iteration, path
        super().__init__(f'stopped by {signal.Signals(signum).name} at iteration {iteration}; checkpoint {path}')


def run_dir_of(cfg: Config) -> Path:
    return Path(cfg.run.output_dir) / (cfg.run.name or 'run')


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {'python': random.getstate(), 'numpy': np.random.get_state(), 'torch': torch.get_rng_state()}
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state['python'])
    np.random.set_state(state['numpy'])
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


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
        ckpt.before_rename = lambda tmp: os.kill(os.getpid(), signal.SIGKILL)
    elif int(where) == d.rank:
        os.kill(os.getpid(), signal.SIGKILL)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over every tensor of the state dict (to compare ranks and runs exactly)."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_pool(cfg: Config, run_dir: Path, d: Dist) -> TaskPool:
    if cfg.pool is None:
        raise ValueError('no pool: give --pool POOL.yaml or set "pool:" in the config (pool: demo for the demo)')
    if cfg.pool == 'demo':
        from .demo import make_demo_pool
        if d.is_main:
            make_demo_pool(run_dir / 'demo_pool')
        d.barrier()
        return load_pool(run_dir / 'demo_pool' / 'pool.yaml', cfg.data.train_splits, cfg.data.val_split)
    return load_pool(cfg.pool, cfg.data.train_splits, cfg.data.val_split)


def _autocast_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    amp = cfg.run.amp
    if amp == 'auto':
        return torch.bfloat16 if device.type == 'cuda' and torch.cuda.is_bf16_supported() else None
    return {'bf16': torch.bfloat16, 'fp16': torch.float16, 'none': None}[amp]


def _autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def evaluate(model: MultiTaskNet, pool: TaskPool, split: str, size: int, batch_size: int, device: torch.device,
             num_workers: int = 0, amp_dtype: torch.dtype | None = None) -> dict[str, float]:
    """Per-task accuracy (every task) and ROC AUC (binary tasks) on ``split``."""
    from sklearn.metrics import roc_auc_score

    was_training = model.training
    model.eval()
    metrics = {}
    try:
        for t, task in enumerate(pool.tasks):
            if split not in task.splits:
                continue
            loader = DataLoader(SplitDataset(pool, t, split, size), batch_size=batch_size, num_workers=num_workers,
                                pin_memory=device.type == 'cuda')
            probs, labels = [], []
            for x, y, ti in loader:
                x = x.to(device, non_blocking=True)
                with _autocast(device, amp_dtype):
                    logits = model(x, ti.to(device))[:, :task.num_classes]
                probs.append(logits.float().softmax(1).cpu())
                labels.append(y)
            p, y = torch.cat(probs), torch.cat(labels)
            metrics[f'{split}/{task.name}/acc'] = float((p.argmax(1) == y).float().mean())
            if task.num_classes == 2 and len(set(y.tolist())) == 2:
                metrics[f'{split}/{task.name}/auc'] = float(roc_auc_score(y.numpy(), p[:, 1].numpy()))
    finally:
        model.train(was_training)
    return metrics


def export_run(model: MultiTaskNet, tasks: list[dict], out_dir: Path, cfg: dict, metrics: dict,
               pool_markdown: str, iteration: int) -> Path:
    """Export the backbone (+ heads) through :func:`mtdp_hub.export.export_folder`."""
    from mtdp_hub.export import export_folder

    lines = ['## Training run', '', f'Trained with mtdp-hub `training/` for {iteration} iterations '
             '(multi-task recipe of Mormont et al. 2021).', '', '### Task pool', '', pool_markdown, '']
    if metrics:
        lines += ['### Validation metrics (last evaluation)', '', '| metric | value |', '|---|---|']
        lines += [f'| {k} | {v:.4f} |' for k, v in sorted(metrics.items())] + ['']
    settings = {k: cfg[k] for k in ('model', 'optim', 'schedule')} | {'data': {'size': cfg['data']['size'],
                                                                              'batch_size': cfg['data']['batch_size']}}
    lines += ['### Settings', '', '```json', json.dumps(settings, indent=2), '```']
    # export_folder writes a contiguous CPU copy; the heads file takes CPU copies of the tensors.
    return export_folder(model.backbone, out_dir, heads=dict(model.heads.items()),
                         class_names={t['name']: t['classes'] for t in tasks}, card_extra='\n'.join(lines),
                         overwrite=True)


def export_checkpoint(path: Path, out_dir: Path | None = None) -> Path:
    """Export from a saved checkpoint (``python -m training export``)."""
    state = ckpt.load_checkpoint(path)
    cfg = state['config']
    backbone = create_backbone(cfg['model']['arch'], init='random')
    set_training_preprocessing(backbone, cfg['data']['size'])
    model = MultiTaskNet(backbone, {t['name']: len(t['classes']) for t in state['tasks']})
    model.load_state_dict(state['model'])
    out_dir = out_dir or Path(path).parent.parent / 'export'
    return export_run(model, state['tasks'], out_dir, cfg, state.get('metrics', {}), state.get('pool_markdown', ''),
                      state['iteration'])


def check_export(export_dir: Path, pool: TaskPool, split: str, size: int, log=print) -> dict[str, float]:
    """Reload the export through timm (``local-dir:``) + its heads file and score ``split``."""
    import timm

    import mtdp_hub  # noqa: F401  (mtdp_* architectures)
    from mtdp_hub.export import load_heads

    backbone = timm.create_model(f'local-dir:{export_dir}', pretrained=True)
    heads, _ = load_heads(export_dir / 'heads.safetensors')
    model = MultiTaskNet(backbone, {name: h.out_features for name, h in heads.items()})
    model.heads.load_state_dict({f'{n}.{k}': v for n, h in heads.items() for k, v in h.state_dict().items()})
    metrics = evaluate(model, pool, split, size, 64, torch.device('cpu'))
    for task in pool.tasks:
        acc = metrics.get(f'{split}/{task.name}/acc')
        if acc is not None:
            log(f'  reloaded export, {task.name} ({task.num_classes} classes, chance {1 / task.num_classes:.2f}): '
                f'{split} accuracy {acc:.3f}')
    return metrics


def main(cfg: Config) -> dict:
    """Train as ``cfg`` says; returns the run summary (also written to ``summary.json``)."""
    d = setup(cfg.run.device)
    try:
        return _train(cfg, d)
    finally:
        teardown(d)


def _train(cfg: Config, d: Dist) -> dict:
    run_dir = run_dir_of(cfg)
    ckpt_dir = run_dir / 'checkpoints'
    if cfg.run.threads and d.device.type == 'cpu':
        torch.set_num_threads(cfg.run.threads)
    if d.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_partial(ckpt_dir)
    d.barrier()
    S = cfg.schedule
    monitor = Monitor(run_dir, d.is_main, 0, S.iterations, cfg.run.progress, cfg.run.tensorboard)
    log = monitor.log
    started = time.time()

    # --- resume? ---------------------------------------------------------------------------
    resume = None
    if cfg.run.resume == 'auto':
        found = ckpt.latest_checkpoint(ckpt_dir, log=log)
        if found is not None:
            resume = found[1]
            changes = resume_changes(resume['config'], cfg)
            if changes:
                raise ConfigError(f'{run_dir} was trained with other settings ({"; ".join(changes)}). Resume with '
                                  f'its own config (python -m training --resume {run_dir}) or start another run '
                                  '(--set run.name=NEW)')
            log(f'resuming from {found[0]} (iteration {resume["iteration"]})')
    elif ckpt.list_checkpoints(ckpt_dir):
        raise ConfigError(f'{ckpt_dir} holds checkpoints of an earlier run and run.resume is never: '
                          'choose another run.name, or run.resume=auto to continue it')
    if d.is_main:
        save_config(cfg, run_dir / 'config.yaml')

    # --- pool and data -----------------------------------------------------------------------
    if cfg.data.batch_size % d.world_size:
        raise ValueError(f'data.batch_size {cfg.data.batch_size} is not divisible by the {d.world_size} ranks')
    per_rank_batch = cfg.data.batch_size // d.world_size
    pool = build_pool(cfg, run_dir, d)
    skipped: list[str] = []
    if cfg.data.scan_images:
        report = scan_pool(pool, list(dict.fromkeys([*cfg.data.train_splits, cfg.data.val_split])),
                           num_workers=cfg.data.num_workers, progress=cfg.run.progress) if d.is_main else None
        report = d.broadcast_object(report)
        apply_bad_image_policy(pool, report, cfg.data.bad_images)   # 'error' raises before any step
        skipped = report.lines()
        if skipped:
            log(f'skipping {len(skipped)} undecodable image(s) (data.bad_images: skip):\n  ' + '\n  '.join(skipped))
    dataset_cls = EncodedMultiTaskDataset if cfg.data.decode == 'gpu' else MultiTaskDataset
    train_set = dataset_cls(pool, cfg.data.train_splits, cfg.data.size, cfg.data.bad_images)
    log(f'pool: {len(pool)} tasks, {len(train_set)} training images; '
        + ', '.join(f'{t.name} ({t.num_classes} cl., {n} img)' for t, n in zip(pool.tasks, train_set.task_sizes)))
    sampler = TaskUniformSampler(train_set.task_sizes, cfg.run.seed, d.rank, d.world_size,
                                 num_draws=S.iterations * per_rank_batch)
    workers = cfg.data.num_workers
    loader_kw = dict(num_workers=workers, pin_memory=cfg.data.pin_memory and d.device.type == 'cuda',
                     collate_fn=collate_encoded if cfg.data.decode == 'gpu' else None)
    if workers > 0:
        loader_kw.update(persistent_workers=cfg.data.persistent_workers, prefetch_factor=cfg.data.prefetch_factor)

    # --- model ---------------------------------------------------------------------------------
    seed_everything(cfg.run.seed)   # identical initial heads on every rank
    backbone = create_backbone(cfg.model.arch, 'random' if resume else cfg.model.init, cfg.model.imagenet_weights,
                               cfg.model.if_weights_missing, log=log)
    set_training_preprocessing(backbone, cfg.data.size)
    model = MultiTaskNet(backbone, {t.name: t.num_classes for t in pool.tasks})
    memory_format = torch.channels_last if cfg.run.channels_last else torch.contiguous_format
    model.to(d.device, memory_format=memory_format)
    if cfg.data.decode == 'gpu':   # decode + augmentation of JPEG bytes on the device
        to_device = DeviceAugment(cfg.data.size, d.device, memory_format)
    else:
        def to_device(x):
            return x.to(d.device, non_blocking=True, memory_format=memory_format)
    opt = cfg.optim
    optimizer = torch.optim.SGD(param_groups(model, opt.lr, opt.head_lr_mult), lr=opt.lr, momentum=opt.momentum,
                                weight_decay=opt.weight_decay, fused=True if d.device.type == 'cuda' else None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambdas(S.warmup_iterations, S.warmup_lr, opt.lr,
                                                                        opt.head_lr_mult))
    amp_dtype = _autocast_dtype(cfg, d.device)
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp_dtype == torch.float16)
    tasks_meta = [{'name': t.name, 'classes': t.classes} for t in pool.tasks]
    metrics: dict[str, float] = {}
    start = 0
    if resume is not None:
        if [t['name'] for t in resume['tasks']] != pool.names:
            raise ValueError(f'the checkpoint was trained on tasks {[t["name"] for t in resume["tasks"]]}, '
                             f'the pool now has {pool.names}')
        model.load_state_dict(resume['model'])
        optimizer.load_state_dict(resume['optimizer'])
        scheduler.load_state_dict(resume['scheduler'])
        scaler.load_state_dict(resume['scaler'])
        sampler.load_state_dict(resume['sampler'])
        _set_rng_state(resume['rng'])
        metrics = resume.get('metrics', {})
        start = resume['iteration']
        monitor.resumed_at(start)
    elif S.bn_recalibration_batches > 0:
        # Mixed-task batches from a stream of their own (the training stream stays untouched).
        cal_sampler = TaskUniformSampler(train_set.task_sizes, cfg.run.seed + 7919, d.rank, d.world_size,
                                         num_draws=S.bn_recalibration_batches * per_rank_batch)
        cal_loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=cal_sampler, num_workers=workers,
                                pin_memory=loader_kw['pin_memory'], collate_fn=loader_kw['collate_fn'])
        n = recalibrate_batchnorm(
            model.backbone, (to_device(x) for x, _, _ in cal_loader),
            all_reduce=d.all_reduce_sum if d.enabled else None)
        log(f'batch-norm re-calibration on {n} mixed-task batches')
    sampler.position = start * per_rank_batch
    loader = DataLoader(train_set, batch_size=per_rank_batch, sampler=sampler, drop_last=True, **loader_kw)
    batches = iter(loader)

    def state(iteration: int) -> dict:
        sampler.position = iteration * per_rank_batch
        return {'iteration': iteration, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'sampler': sampler.state_dict(),
                'rng': _rng_state(), 'config': to_dict(cfg), 'tasks': tasks_meta, 'metrics': metrics,
                'pool_markdown': pool.summary_markdown(), 'world_size': d.world_size}

    def save(iteration: int) -> Path | None:
        path = ckpt.save_checkpoint(state(iteration), ckpt_dir, iteration, S.keep_checkpoints) if d.is_main else None
        d.barrier()
        return path

    stop = {'signum': None}

    def on_signal(signum, frame):
        stop['signum'] = signum

    previous_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}

    # --- the loop ------------------------------------------------------------------------------
    T = len(pool)
    global_batch = per_rank_batch * d.world_size
    first_bad = torch.full((), -1, dtype=torch.long, device=d.device)
    bad_counts = torch.zeros(T, dtype=torch.long, device=d.device)
    loss_sum = torch.zeros((), device=d.device)
    steps_since, t_last = 0, time.time()
    train_model = None
    frozen = None
    model.train()
    if d.is_main and monitor.bar is not None:
        monitor.bar.n = start
    try:
        for it in range(start, S.iterations):
            want_frozen = it < S.warmup_iterations
            if want_frozen != frozen:   # phase change: (re)wrap, DDP must see which params learn
                model.freeze_backbone() if want_frozen else model.unfreeze_backbone()
                model.train()
                train_model = DistributedDataParallel(model, device_ids=[d.device.index] if d.device.type == 'cuda'
                                                      else None) if d.enabled else model
                if cfg.run.compile:
                    train_model = torch.compile(train_model)
                frozen = want_frozen
                log(f'iteration {it}: ' + ('head-only warm-up (backbone frozen, BN in eval mode)' if frozen
                                           else 'training the whole network'))
            x, y, t = next(batches)
            x = to_device(x)
            y, t = y.to(d.device, non_blocking=True), t.to(d.device, non_blocking=True)
            with _autocast(d.device, amp_dtype):
                logits = train_model(x, t)
            loss = multitask_loss(logits, y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            counts = task_counts(t, T)
            global_counts = d.all_reduce_sum(counts.clone()) if d.enabled else counts
            scaler.unscale_(optimizer)
            rescale_head_grads(model, global_counts, global_batch)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()

            detached = loss.detach()
            newly_bad = ~torch.isfinite(detached) & (first_bad < 0)
            first_bad = torch.where(newly_bad, torch.full_like(first_bad, it + 1), first_bad)
            bad_counts = torch.where(newly_bad, counts, bad_counts)
            loss_sum += torch.nan_to_num(detached, nan=0.0, posinf=0.0)
            steps_since += 1
            iteration = it + 1
            _fault_point(d, iteration)

            is_log = iteration % S.log_every == 0 or iteration == S.iterations
            is_ckpt = iteration % S.checkpoint_every == 0 or iteration == S.iterations
            is_val = bool(S.val_every) and iteration % S.val_every == 0 and iteration < S.iterations
            stopping = stop['signum'] is not None
            check_now = is_log or is_ckpt or d.device.type == 'cpu' or (stopping and not d.enabled)
            if check_now and d.any(bool(first_bad.item() >= 0)):
                bad_it = int(first_bad.item()) if first_bad.item() >= 0 else iteration
                present = {pool.names[i]: int(c) for i, c in enumerate(bad_counts.tolist()) if c > 0}
                last = ckpt.list_checkpoints(ckpt_dir)
                raise NonFiniteLossError(
                    f'non-finite loss at iteration {bad_it} (tasks in the batch: {present or "n/a (another rank)"}); '
                    f'stopping. The last good checkpoint is {last[-1] if last else "none (no checkpoint yet)"}. '
                    'Lower optim.lr / head_lr_mult or use run.amp=bf16/none.')
            if is_log:
                now = time.time()
                mean_loss = float(loss_sum.item()) / max(steps_since, 1)
                images_per_s = steps_since * global_batch / max(now - t_last, 1e-9)
                monitor.scalars(iteration, {'train/loss': mean_loss, 'train/images_per_s': images_per_s,
                                            'train/lr_backbone': optimizer.param_groups[0]['lr'],
                                            'train/lr_heads': optimizer.param_groups[1]['lr']})
                monitor.progress(iteration, mean_loss, images_per_s)
                loss_sum.zero_()
                steps_since, t_last = 0, now
            if is_val:
                metrics = _validate(model, pool, cfg, d, amp_dtype, iteration, monitor)
            if (is_log or not d.enabled) and d.any(bool(stop['signum'])):
                path = save(iteration)
                raise TrainingInterrupted(stop['signum'] or signal.SIGTERM, iteration, path)
            if is_ckpt:
                save(iteration)

        # --- the end: validation, export -----------------------------------------------------
        if d.enabled:   # DDP broadcasts rank 0's BN statistics before each forward; do it once more
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, src=0)
        metrics = _validate(model, pool, cfg, d, amp_dtype, S.iterations, monitor)
        fingerprint = weights_fingerprint(model)
        fingerprints = [fingerprint]
        if d.enabled:
            fingerprints = [None] * d.world_size
            torch.distributed.all_gather_object(fingerprints, fingerprint)
        summary = {'run_dir': str(run_dir), 'iterations': S.iterations, 'resumed_from': start if resume else None,
                   'weights_sha256': fingerprint, 'rank_weights_sha256': fingerprints,
                   'metrics': metrics, 'skipped_images': skipped, 'wall_time_s': round(time.time() - started, 1),
                   'world_size': d.world_size, 'tasks': tasks_meta}
        if d.is_main:
            if cfg.run.export:
                export_dir = export_run(model, tasks_meta, run_dir / 'export', to_dict(cfg), metrics,
                                        pool.summary_markdown(), S.iterations)
                summary['export'] = str(export_dir)
                log(f'exported the backbone to {export_dir}')
                if cfg.pool == 'demo':
                    summary['export_metrics'] = check_export(export_dir, pool, cfg.data.val_split, cfg.data.size, log)
            (run_dir / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
        d.barrier()
        return summary
    finally:
        for s, h in previous_handlers.items():
            signal.signal(s, h)
        monitor.close()


def _validate(model: MultiTaskNet, pool: TaskPool, cfg: Config, d: Dist, amp_dtype, iteration: int,
              monitor: Monitor) -> dict[str, float]:
    metrics = {}
    if d.is_main:
        metrics = evaluate(model, pool, cfg.data.val_split, cfg.data.size, cfg.data.eval_batch_size, d.device,
                           cfg.data.num_workers, amp_dtype)
        monitor.scalars(iteration, metrics)
        if metrics:
            monitor.log(f'iteration {iteration}: ' + ', '.join(f'{k} {v:.3f}' for k, v in metrics.items()))
    d.barrier()
    return metrics if d.is_main else {}
