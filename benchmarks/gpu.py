"""GPU benchmark: the training step, the data path, the driver and extraction on one NVIDIA GPU.

Run from the repository root (``bash benchmarks/gpu.sh`` runs the GPU test suite first, then this)::

    python -m benchmarks.gpu                          # one GPU, within --budget-s (default 360 s)
    python -m benchmarks.gpu --smoke --device cpu     # every section tiny on the CPU (what the test runs)

It makes its own pool of JPEGs in a temporary folder (22 tasks with the paper's class counts, 224 px):
``noise`` (noise-textured, about 26 KiB each, the heavy case for the decoding workers) and ``smooth``
(about 16 KiB, like the real H&E patches). Settings: bf16 autocast, channels_last, fused SGD
(momentum 0.9), cudnn.benchmark, batch 256, 22 heads; the training step is the driver's own
:class:`training.step.TrainStep`, and the batches are the driver's: uint8 images from DataLoader
workers over :class:`training.data.MultiTaskDataset` (task-uniform draws), normalised on the device by
:class:`mtdp_hub.features.pixels.Normalise`. Sections, in order of priority:

- ``overhead_<arch>[_compiled]``: multi-task step / the same backbone with one head at batch 64
  (:mod:`benchmarks.multitask_overhead`), eager and compiled;
- ``train_<arch>[_compiled]``: ``synthetic`` (a fixed batch on the device: the ceiling) and
  ``e2e_<jpegs>`` (end to end from the JPEGs), each with its ratio to ``synthetic``;
- ``driver``: ``python -m training`` on the generated pool, its own img/s from ``metrics.csv``;
- ``extraction_<precision>``: ``python -m benchmarks.extraction`` (``mtdp extract``'s pipeline vs
  the bare forward).

Each section has a time need; one that does not fit what is left of ``--budget-s`` is skipped with
the reason, never started. One JSON line per section as it ends, then the summary (with the targets
met / not met), also written to ``$OUT/gpu.json`` when ``$OUT`` is set.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg

from mtdp_hub.features.pixels import Normalise
from mtdp_hub.features.runtime import available_cpus
from training.data import IMAGENET_MEAN, IMAGENET_STD, MultiTaskDataset
from training.model import MultiTaskNet
from training.pool import load_pool
from training.recipe import sgd
from training.sampler import TaskUniformSampler
from training.step import TrainStep

from .machine import machine_info
from .multitask_overhead import (
    PAPER_CLASSES,
    fused_available,
    multitask_setup,
    single_head_setup,
    synthetic_batch,
    task_sizes,
)
from .timing import interleaved_rates, ratios, sync

ROOT = Path(__file__).resolve().parents[1]
# Fraction of per-pixel noise over a smooth base: at 224 px and quality 90, 0.25 gives ~26 KiB, 0.095 ~16 KiB.
JPEG_KINDS = {'noise': 0.25, 'smooth': 0.095}
TARGETS = {
    'e2e_over_synthetic': 0.90,  # end to end from JPEG (26 KiB noise JPEGs too), without compile
    'paper_schedule_minutes': 10.0,  # 50k iterations x 64 images
    'extraction_over_forward': 0.90,
    'multitask_overhead': 0.97,  # batch 64, eager and compiled
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- generated pool ------------------------------------------------------------------------------
def make_jpegs(
    folder: Path, n_images: int, size: int, noise: float, n_tasks: int = 22, seed: int = 0
) -> dict:
    """About ``n_images`` training JPEGs in the pool layout ``{folder}/task{t}/{train,val}/c{k}/`` (val: one per class)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for t in range(n_tasks):
        classes = PAPER_CLASSES[t % len(PAPER_CLASSES)]
        per_task = max(classes, math.ceil(n_images / n_tasks))  # every class in training
        for i in range(per_task + classes):
            split, k = ('train', i % classes) if i < per_task else ('val', i - per_task)
            base = torch.rand(1, 3, max(2, size // 16), max(2, size // 16), generator=g)
            img = F.interpolate(base, size=(size, size), mode='bilinear', align_corners=False)[0]
            img = (1 - noise) * img + noise * torch.rand(3, size, size, generator=g)
            path = folder / f'task{t:02d}' / split / f'c{k}' / f'{i:05d}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(
                encode_jpeg(img.mul(255).clamp(0, 255).to(torch.uint8), quality=90).numpy().tobytes()
            )
        tasks.append({'name': f'task{t:02d}', 'root': str(folder / f'task{t:02d}')})
    return {'tasks': tasks}


@dataclass
class Context:
    """What every section shares."""

    args: argparse.Namespace
    device: torch.device
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    fused: bool
    folder: Path
    pools: dict[str, dict] = field(default_factory=dict)  # JPEG kind -> pool spec
    datasets: dict[str, MultiTaskDataset] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == 'cuda'


def make_pools(ctx: Context) -> dict:
    """Both JPEG kinds on disk; returns their counts, sizes and the seconds it took."""
    out = {}
    for kind, noise in JPEG_KINDS.items():
        t0 = time.perf_counter()
        root = ctx.folder / kind
        ctx.pools[kind] = make_jpegs(root, ctx.args.n_jpegs, ctx.args.jpeg_size, noise, ctx.args.tasks)
        pool = load_pool(ctx.pools[kind], ['train'], None)
        ctx.datasets[kind] = MultiTaskDataset(pool, ['train'], ctx.args.img_size)
        files = list(root.rglob('*.jpg'))
        out[kind] = {
            'train_images': len(ctx.datasets[kind]),
            'mean_kib': round(sum(p.stat().st_size for p in files) / len(files) / 1024, 1),
            'seconds': round(time.perf_counter() - t0, 1),
        }
    return out


# --- the training step ---------------------------------------------------------------------------
def make_step(arch: str, ctx: Context, compiled: bool) -> TrainStep:
    model = MultiTaskNet(timm.create_model(arch, pretrained=False, num_classes=0), task_sizes(ctx.args.tasks))
    model.to(ctx.device, memory_format=ctx.memory_format).train()
    step = TrainStep(model, sgd(model, 1e-3, fused=ctx.fused), device=ctx.device, amp_dtype=ctx.amp_dtype)
    if compiled:
        step.forward = torch.compile(model, dynamic=False)
    return step


def timed_steps(step: Callable[[], None], batch: int, seconds: float, min_steps: int, device) -> dict:
    """Call ``step()`` for at least ``seconds`` (and ``min_steps``); img/s over that span."""
    sync(device)
    start, n = time.perf_counter(), 0
    while n < min_steps or time.perf_counter() - start < seconds:
        step()
        n += 1
    sync(device)
    elapsed = time.perf_counter() - start
    return {'img_per_s': round(n * batch / elapsed, 2), 'steps': n, 'seconds': round(elapsed, 2)}


def synthetic(step: TrainStep, ctx: Context) -> dict:
    """A fixed batch already on the device (the compute ceiling); the warm-up includes compilation."""
    a = ctx.args
    x, y, t = synthetic_batch(
        a.batch_size, a.img_size, step.model.num_classes, ctx.device, ctx.memory_format == torch.channels_last
    )
    t0 = time.perf_counter()
    for _ in range(a.warmup_steps):
        step(x, y, t)
    sync(ctx.device)
    warm = round(time.perf_counter() - t0, 1)
    res = timed_steps(lambda: step(x, y, t), a.batch_size, a.measure_s, a.min_steps, ctx.device)
    return {**res, 'warmup_s': warm}


def end_to_end(step: TrainStep, kind: str, ctx: Context) -> dict:
    """The driver's data path: workers decode and augment to uint8, the device normalises."""
    a, dataset = ctx.args, ctx.datasets[kind]
    kw = dict(persistent_workers=True, prefetch_factor=4) if a.workers > 0 else {}
    loader = DataLoader(
        dataset,
        batch_size=a.batch_size,
        sampler=TaskUniformSampler(dataset.task_sizes, a.seed, num_draws=None),
        drop_last=True,
        num_workers=a.workers,
        pin_memory=ctx.cuda,
        **kw,
    )
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, ctx.device, ctx.memory_format)
    held = {'batches': iter(loader)}  # cleared at the end, which stops the workers

    def one() -> None:
        x, y, t = next(held['batches'])
        step(normalise(x), y.to(ctx.device, non_blocking=True), t.to(ctx.device, non_blocking=True))

    t0 = time.perf_counter()
    for _ in range(a.warmup_steps):  # worker start-up and the first batches
        one()
    sync(ctx.device)
    startup = round(time.perf_counter() - t0, 1)
    res = timed_steps(one, a.batch_size, a.measure_s, a.min_steps, ctx.device)
    held.clear()
    return {**res, 'workers': a.workers, 'startup_s': startup}


def train_section(arch: str, compiled: bool, ctx: Context) -> dict:
    """Synthetic ceiling, then end to end on each JPEG kind, with its ratio to the ceiling."""
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    step = make_step(arch, ctx, compiled)
    res: dict = {'batch_size': ctx.args.batch_size, 'compile': compiled, 'synthetic': synthetic(step, ctx)}
    ceiling = res['synthetic']['img_per_s']
    log(f'{arch}{" compiled" if compiled else ""}: synthetic {ceiling} img/s')
    for kind in ctx.args.jpegs:
        e2e = end_to_end(step, kind, ctx)
        e2e['of_synthetic'] = round(e2e['img_per_s'] / ceiling, 4)
        res[f'e2e_{kind}'] = e2e
        log(
            f'{arch}: end to end [{kind} JPEGs] {e2e["img_per_s"]} img/s ({e2e["of_synthetic"]} of synthetic)'
        )
    if ctx.cuda:
        res['peak_memory_gib'] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**30, 2)
    return res


def overhead_section(arch: str, compiled: bool, ctx: Context) -> dict:
    """Multi-task step (TrainStep, 22 heads) vs one head, interleaved, at the paper's batch of 64."""
    a = ctx.args
    tasks = task_sizes(a.tasks)
    cl = ctx.memory_format == torch.channels_last
    batch = synthetic_batch(a.overhead_batch_size, a.img_size, list(tasks.values()), ctx.device, cl)
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    common = dict(amp_dtype=ctx.amp_dtype, compile_model=compiled, fused=ctx.fused)
    multi = multitask_setup(backbone, tasks, batch, **common)
    single = single_head_setup(timm.create_model(arch, num_classes=0), max(tasks.values()), batch, **common)
    rates = interleaved_rates(
        {
            'multitask': lambda: sum(multi() for _ in range(a.overhead_steps)),
            'single_head': lambda: sum(single() for _ in range(a.overhead_steps)),
        },
        rounds=a.overhead_rounds,
        warmup=2 if compiled else 1,
        device=ctx.device,
        deadline=time.perf_counter() + a.overhead_s,
    )
    r = ratios(rates, 'multitask', 'single_head')
    return {
        'batch_size': a.overhead_batch_size,
        'compile': compiled,
        'multitask_img_per_s': round(rates['multitask']['median'], 2),
        'single_head_img_per_s': round(rates['single_head']['median'], 2),
        **r,
        'rounds': rates['multitask']['rounds'],
    }


# --- the driver and extraction, as a user runs them ----------------------------------------------
def driver_overrides(ctx: Context, out: Path) -> list[str]:
    a = ctx.args
    sets = {
        'model.arch': a.archs[0],
        'model.init': 'random',
        'data.size': a.img_size,
        'data.batch_size': a.driver_batch_size,
        'data.num_workers': a.workers,
        'data.scan_images': 'false',
        'schedule.iterations': a.driver_iterations,
        'schedule.warmup_iterations': 0,
        'schedule.bn_recalibration_batches': 2,
        'schedule.val_every': 0,
        'schedule.log_every': a.driver_log_every,
        'schedule.checkpoint_every': a.driver_iterations,
        'run.device': ctx.device.type,
        'run.amp': 'bf16' if ctx.amp_dtype == torch.bfloat16 else 'none',
        'run.channels_last': str(ctx.memory_format == torch.channels_last).lower(),
        'run.compile': 'false',
        'run.export': 'false',
        'run.progress': 'false',
        'run.tensorboard': 'false',
        'run.output_dir': str(out),
        'run.name': 'driver',
    }
    return [x for k, v in sets.items() for x in ('--set', f'{k}={v}')]


def driver_section(ctx: Context, timeout: float) -> dict:
    """``python -m training`` on the noise pool; img/s from its own ``metrics.csv`` (first interval,
    with the workers' start-up, left out)."""
    out = ctx.folder / 'driver-runs'
    pool = ctx.folder / 'pool.yaml'
    pool.write_text(json.dumps(ctx.pools['noise']))  # JSON is YAML
    cmd = [sys.executable, '-m', 'training', '--pool', str(pool), *driver_overrides(ctx, out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env(ctx))
    wall = round(time.perf_counter() - t0, 1)
    if proc.returncode != 0:
        return {'error': f'exit {proc.returncode}: {proc.stderr[-1500:]}', 'wall_s': wall}
    with open(out / 'driver' / 'metrics.csv', newline='') as f:
        rates = [float(r['value']) for r in csv.DictReader(f) if r['name'] == 'train/images_per_s']
    steady = rates[1:] or rates
    img_per_s = sorted(steady)[len(steady) // 2]
    return {
        'command': 'python -m training --pool POOL ' + ' '.join(cmd[5:]),
        'batch_size': ctx.args.driver_batch_size,
        'img_per_s': round(img_per_s, 2),
        'logged_img_per_s': [round(r, 1) for r in rates],
        'paper_schedule_minutes': round(50_000 * 64 / img_per_s / 60, 1),
        'wall_s': wall,
    }


def extraction_section(precision: str, ctx: Context, timeout: float) -> dict:
    """``python -m benchmarks.extraction`` (extract pipeline vs bare forward) at this precision."""
    a = ctx.args
    cmd = [sys.executable, '-m', 'benchmarks.extraction', '--device', ctx.device.type, '--arch', a.archs[0]]
    cmd += ['--size', str(a.img_size), '--precision', precision, *a.extraction_args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=_env(ctx))
    if proc.returncode != 0:
        return {'error': f'exit {proc.returncode}: {proc.stderr[-1500:]}'}
    result = json.loads(proc.stdout[proc.stdout.index('{') :])
    result.pop('machine', None)
    return {'command': ' '.join(['python', *cmd[1:]]), **result}


def _env(ctx: Context) -> dict:
    env = {k: v for k, v in os.environ.items() if k != 'OUT'}
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), env.get('PYTHONPATH')]))
    return env


# --- plan, budget, targets -----------------------------------------------------------------------
class Budget:
    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def plan(ctx: Context) -> list[tuple[str, float, Callable[[float], dict]]]:
    """(key, seconds it needs on one H100 incl. compilation, run(seconds_left)), most wanted first."""
    first, rest = ctx.args.archs[0], ctx.args.archs[1:]
    steps: list = [
        (f'overhead_{first}', 20, lambda left: overhead_section(first, False, ctx)),
        (f'train_{first}', 45, lambda left: train_section(first, False, ctx)),
        ('driver', 60, lambda left: driver_section(ctx, min(left, 240))),
    ]
    steps += [
        (f'extraction_{p}', 45, lambda left, p=p: extraction_section(p, ctx, min(left, 150)))
        for p in ctx.args.precisions
    ]
    for arch in rest:
        steps += [
            (f'overhead_{arch}', 25, lambda left, a=arch: overhead_section(a, False, ctx)),
            (f'train_{arch}', 50, lambda left, a=arch: train_section(a, False, ctx)),
        ]
    steps += [
        (f'overhead_{first}_compiled', 60, lambda left: overhead_section(first, True, ctx)),
        (f'train_{first}_compiled', 80, lambda left: train_section(first, True, ctx)),
    ]
    for arch in rest:
        steps += [
            (f'overhead_{arch}_compiled', 90, lambda left, a=arch: overhead_section(a, True, ctx)),
            (f'train_{arch}_compiled', 150, lambda left, a=arch: train_section(a, True, ctx)),
        ]
    if not ctx.args.compile:
        steps = [s for s in steps if not s[0].endswith('_compiled')]
    return steps


def run_plan(ctx: Context, budget: Budget, summary: dict) -> None:
    """Each section when it fits what is left of the budget (skipped with the reason otherwise)."""
    for key, need, run in plan(ctx):
        need = 0 if ctx.args.smoke else need
        if budget.left() < need:
            result = {'skipped': f'time budget: {budget.left():.0f} s left, about {need} s needed'}
        else:
            t0 = time.perf_counter()
            try:
                result = run(budget.left())
            except Exception as e:  # report and go on: the other sections are still worth having
                result = {'error': f'{type(e).__name__}: {str(e)[:1500]}'}
            result['section_s'] = round(time.perf_counter() - t0, 1)
        summary['sections'][key] = result
        print(json.dumps({'section': key, **result}), flush=True)


def _target(value, target: float, higher_is_better: bool = True) -> dict:
    met = None if value is None else (value >= target if higher_is_better else value < target)
    return {'value': value, 'target': target, 'met': met}


def targets(summary: dict, archs: list[str]) -> dict:
    """Each target with its value, or ``met: None`` where the section did not run."""
    s, first = summary['sections'], archs[0]
    out = {}
    for kind in JPEG_KINDS:
        e2e = s.get(f'train_{first}', {}).get(f'e2e_{kind}', {})
        out[f'e2e_{kind}_over_synthetic_{first}'] = _target(
            e2e.get('of_synthetic'), TARGETS['e2e_over_synthetic']
        )
    out['paper_schedule_minutes'] = _target(
        s.get('driver', {}).get('paper_schedule_minutes'), TARGETS['paper_schedule_minutes'], False
    )
    for key in [k for k in s if k.startswith('extraction_')]:
        out[f'{key}_over_forward'] = _target(s[key].get('ratio'), TARGETS['extraction_over_forward'])
    for key in [k for k in s if k.startswith('overhead_')]:
        out[key] = _target(s[key].get('ratio'), TARGETS['multitask_overhead'])
    return out


# --- command line --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' (with --smoke)")
    p.add_argument('--smoke', action='store_true', help='every section tiny (32 px, batch 4, a few steps)')
    p.add_argument('--archs', nargs='+', default=['resnet50', 'densenet121'])
    p.add_argument('--tasks', type=int, default=22)
    p.add_argument('--batch-size', type=int, default=256)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument(
        '--jpeg-size', type=int, default=None, help='side of the generated JPEGs (default: img-size)'
    )
    p.add_argument('--n-jpegs', type=int, default=4400, help='training JPEGs per kind (over the tasks)')
    p.add_argument('--jpegs', nargs='+', default=list(JPEG_KINDS), choices=list(JPEG_KINDS))
    p.add_argument('--workers', type=int, default=None, help='DataLoader workers (default: CPUs - 1, <= 16)')
    p.add_argument('--no-compile', dest='compile', action='store_false', help='skip the compiled sections')
    p.add_argument(
        '--compile', dest='compile', action='store_true', default=None, help='(smoke: off by default)'
    )
    p.add_argument('--measure-s', type=float, default=6.0, help='seconds timed per measurement')
    p.add_argument('--min-steps', type=int, default=5)
    p.add_argument('--warmup-steps', type=int, default=5)
    p.add_argument('--overhead-batch-size', type=int, default=64, help="the paper's batch")
    p.add_argument('--overhead-rounds', type=int, default=10)
    p.add_argument('--overhead-steps', type=int, default=3)
    p.add_argument('--overhead-s', type=float, default=20.0, help='timed seconds per overhead section')
    p.add_argument('--driver-batch-size', type=int, default=256)
    p.add_argument('--driver-iterations', type=int, default=300)
    p.add_argument('--driver-log-every', type=int, default=50)
    p.add_argument('--precisions', nargs='+', default=['bf16', 'fp16'], help='extraction precisions')
    p.add_argument(
        '--extraction-args',
        nargs=argparse.REMAINDER,
        default=['--rounds', '2'],
        help='passed on to python -m benchmarks.extraction (last option)',
    )
    p.add_argument('--budget-s', type=float, default=360.0, help='start no section that would not fit')
    p.add_argument('--threads', type=int, default=None, help='torch CPU threads (--smoke: 1)')
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(compile=None)
    p.add_argument('--json', default=None, help='also write the summary here (default: $OUT/gpu.json)')
    return p


def apply_defaults(args: argparse.Namespace) -> None:
    """``--smoke``: every section at toy size, so that a CPU checks the code paths."""
    cpus = available_cpus()
    if args.smoke:
        args.batch_size = args.overhead_batch_size = args.driver_batch_size = 4
        args.img_size, args.n_jpegs, args.jpeg_size = 32, 44, args.jpeg_size or 40
        args.measure_s, args.min_steps, args.warmup_steps = 0.0, 2, 1
        args.overhead_rounds, args.overhead_steps, args.overhead_s = 2, 1, 0.0
        args.driver_iterations, args.driver_log_every = 4, 2
        args.workers = 0 if args.workers is None else args.workers
        args.precisions = ['fp32'] if args.device == 'cpu' else args.precisions
        args.extraction_args = [
            '--images',
            '4',
            '--batch-size',
            '2',
            '--rounds',
            '1',
            '--workers',
            '0',
            '--threads',
            '1',
        ]
        args.threads = args.threads or 1  # a shared CPU: two threads with a busy neighbour ran 30x slower
        args.budget_s = 3600.0  # a smoke run checks that every section runs: skip none
        args.compile = bool(args.compile)
    args.compile = True if args.compile is None else args.compile
    args.jpeg_size = args.jpeg_size or args.img_size
    if args.workers is None:
        args.workers = max(1, min(16, cpus - 1))


def make_context(args: argparse.Namespace, folder: Path) -> Context:
    device = torch.device(args.device)
    cuda = device.type == 'cuda'
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return Context(
        args,
        device,
        torch.bfloat16 if cuda else None,  # bf16 is emulated and slow on a CPU
        torch.channels_last if cuda or args.smoke else torch.contiguous_format,
        fused_available(device) if cuda else False,
        folder,
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_defaults(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith('cuda') and not torch.cuda.is_available():
        parser.error('no CUDA device: use --device cpu --smoke to check the script on a CPU')
    budget = Budget(args.budget_s)
    card = torch.cuda.get_device_name(torch.device(args.device)) if args.device.startswith('cuda') else 'cpu'
    log(f'device: {card}; torch {torch.__version__}, timm {timm.__version__}')
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix='mtdp-gpu-bench-') as tmp:
        ctx = make_context(args, Path(tmp))
        settings = {k: v for k, v in vars(args).items() if k not in ('json',)}
        summary: dict = {'benchmark': 'gpu', 'card': card, 'smoke': args.smoke, 'settings': settings}
        summary['settings'].update(amp='bf16' if ctx.amp_dtype else 'none', fused_sgd=ctx.fused)
        summary['jpegs'] = make_pools(ctx)
        print(json.dumps({'section': 'jpegs', **summary['jpegs']}), flush=True)
        summary['sections'] = {}
        run_plan(ctx, budget, summary)
    summary['targets'] = targets(summary, args.archs)
    summary['wall_s'] = round(time.perf_counter() - budget.start, 1)
    summary['machine'] = machine_info()
    text = json.dumps(summary, indent=2)
    print(text, flush=True)
    path = args.json or (os.path.join(os.environ['OUT'], 'gpu.json') if os.environ.get('OUT') else None)
    if path:
        Path(path).write_text(text + '\n')
    log(f'card: {card}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
