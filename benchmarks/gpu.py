"""GPU benchmark: multi-task training and extraction img/s on one NVIDIA GPU, in under 8 minutes.

Needs only torch, timm and torchvision (and what they pull in: numpy, Pillow, PyYAML); it imports
``training`` and ``mtdp_hub`` from the checkout, so run it from the repository root::

    bash benchmarks/gpu.sh                              # = python -m benchmarks.gpu
    python -m benchmarks.gpu --device cpu --smoke       # everything tiny on the CPU (what the test runs)

It makes its own JPEGs (224 px, noise-textured, 22 task folders with the paper's class counts)
in a temporary folder, then measures, with bf16 autocast, channels_last, ``torch.compile`` and
fused SGD (momentum 0.9) where available, the training driver's own step
(:class:`training.step.TrainStep`: ``MultiTaskNet`` with 22 routed heads, ``multitask_loss``,
head-gradient rescale, :func:`training.recipe.sgd`):
  - ``synthetic``: a fixed batch already on the GPU (the compute ceiling);
  - end to end from JPEG, task-uniform draws (``TaskUniformSampler``), DataLoader workers:
      ``project``        the training data path as it is (PIL decode + augmentation + float
                         normalisation per image in the workers);
      ``uint8``          PIL decode + crop/resize/flips in the workers, uint8 batches, float
                         conversion + normalisation on the GPU;
      ``gpu_decode``     the training loop's ``data.decode: gpu``: the workers only read the file
                         bytes (``training.data.EncodedMultiTaskDataset``); ``DeviceAugment`` decodes
                         the batch with ``decode_jpeg(device='cuda')`` and crops, resizes, flips and
                         normalises there;
  - the multi-task overhead in eager mode at the paper's batch of 64 (multi-task step / the same
    backbone with one head);
  - extraction: ``mtdp extract``'s pipeline (``extract_source``) vs the bare forward on
    preloaded tensors;
  - peak GPU memory per model, and the card's name.
Each section has a time budget; a section that would not fit is skipped and says so. One JSON
line per section is printed as it ends (so a run cut short still leaves figures), then the summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from torchvision.io import encode_jpeg

from mtdp_hub.features import FeatureExtractor, extract_source, make_source
from mtdp_hub.features.runtime import autocast
from mtdp_hub.images import find_images
from training.data import (
    DeviceAugment,
    DeviceNormalise,
    EncodedMultiTaskDataset,
    MultiTaskDataset,
    collate_encoded,
    train_transform_uint8,
)
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
from .timing import interleaved_rates, ratios

TARGET_E2E_RESNET50 = 4000.0  # img/s on one H100: 50k x 64 images in ~13 minutes


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit_line(section: str, payload: dict) -> None:
    print(json.dumps({'section': section, **payload}), flush=True)


# ---------------------------------------------------------------------------------------------
# synthetic JPEGs
def make_jpegs(folder: Path, n_images: int, size: tuple[int, int], n_tasks: int = 22, seed: int = 0) -> dict:
    """``n_images`` noise-textured JPEGs in ``{folder}/task{t}/train/c{k}/`` (the pool layout)."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    per_task = max(1, math.ceil(n_images / n_tasks))
    tasks = []
    for t in range(n_tasks):
        classes = PAPER_CLASSES[t % len(PAPER_CLASSES)]
        for i in range(per_task):
            base = torch.rand(1, 3, max(2, h // 16), max(2, w // 16), generator=g)
            img = F.interpolate(base, size=(h, w), mode='bilinear', align_corners=False)[0]
            img = (
                (0.75 * img + 0.25 * torch.rand(3, h, w, generator=g)).mul(255).clamp(0, 255).to(torch.uint8)
            )
            path = folder / f'task{t:02d}' / 'train' / f'c{i % classes}' / f'{i:05d}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_jpeg(img, quality=90).numpy().tobytes())
        tasks.append({'name': f'task{t:02d}', 'root': str(folder / f'task{t:02d}')})
    return {'tasks': tasks}


# ---------------------------------------------------------------------------------------------
# datasets for the end-to-end modes (items keyed by TaskUniformSampler's (index, seed) pairs)
class Uint8Dataset(MultiTaskDataset):
    """The project's data path ending at a uint8 CHW tensor (normalisation left to the GPU)."""

    def _load(self, task, split: str, j: int, generator: torch.Generator) -> torch.Tensor:
        return train_transform_uint8(task.load(split, j), self.size, generator)


# ---------------------------------------------------------------------------------------------
class Trainer:
    """The training driver's step (:class:`training.step.TrainStep`) with bf16 autocast, channels_last,
    compile and fused SGD."""

    def __init__(
        self,
        arch: str,
        n_tasks: int,
        device: torch.device,
        amp_dtype,
        channels_last: bool,
        compile_model: bool,
        fused: bool,
        lr: float = 1e-3,
    ):
        self.device = device
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = MultiTaskNet(
            timm.create_model(arch, pretrained=False, num_classes=0), task_sizes(n_tasks)
        )
        self.model.to(device, memory_format=self.memory_format).train()
        self.step = TrainStep(
            self.model, sgd(self.model, lr, fused=fused), device=device, amp_dtype=amp_dtype
        )
        if compile_model:
            self.step.forward = torch.compile(self.model, dynamic=False)

    @property
    def compiled(self) -> bool:
        return self.step.forward is not self.model

    def eager(self) -> None:
        self.step.forward = self.model


def sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed_steps(step, batch: int, seconds: float, min_steps: int, device: torch.device) -> dict:
    """Call ``step()`` for at least ``seconds`` (and ``min_steps``); img/s over that span."""
    sync(device)
    start = time.perf_counter()
    n = 0
    while n < min_steps or time.perf_counter() - start < seconds:
        step()
        n += 1
    sync(device)
    elapsed = time.perf_counter() - start
    return {'img_per_s': round(n * batch / elapsed, 2), 'steps': n, 'seconds': round(elapsed, 2)}


class Budget:
    def __init__(self, seconds: float):
        self.start = time.perf_counter()
        self.end = self.start + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def fits(self, need: float) -> bool:
        return self.left() >= need


def e2e_loader(mode: str, base: MultiTaskDataset, batch: int, workers: int, seed: int, device: torch.device):
    encoded = EncodedMultiTaskDataset(base.pool, ['train'], base.size)  # training's data.decode: gpu
    ds = {'project': base, 'uint8': Uint8Dataset(base.pool, ['train'], base.size), 'gpu_decode': encoded}[
        mode
    ]
    sampler = TaskUniformSampler(base.task_sizes, seed, num_draws=None)
    kw = dict(
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        pin_memory=device.type == 'cuda',
    )
    if workers > 0:
        kw.update(
            persistent_workers=True, prefetch_factor=2
        )  # 15 workers x 2 x 256 x 600 KB = 4.6 GB of /dev/shm
    if mode == 'gpu_decode':
        kw.update(collate_fn=collate_encoded)
    return DataLoader(ds, **kw)


def run_e2e(
    trainer: Trainer,
    mode: str,
    base: MultiTaskDataset,
    args,
    device: torch.device,
    normalise: DeviceNormalise,
    seconds: float,
) -> dict:
    workers = args.decode_workers if mode == 'gpu_decode' else args.workers
    loader = e2e_loader(mode, base, args.batch_size, workers, args.seed, device)
    held = {'batches': iter(loader)}  # cleared at the end, which stops the workers
    mf = trainer.memory_format
    device_augment = DeviceAugment(args.img_size, device, mf)

    def step():
        batches = held['batches']
        if mode == 'gpu_decode':
            data, y, t = next(batches)
            x = device_augment(data)  # the training loop's path for data.decode: gpu
        else:
            x, y, t = next(batches)
            x = normalise(x) if mode == 'uint8' else x.to(device, non_blocking=True, memory_format=mf)
        trainer.step(x, y.to(device, non_blocking=True), t.to(device, non_blocking=True))

    t0 = time.perf_counter()
    for _ in range(args.warmup_steps):  # worker start-up, first batches, allocator
        step()
    sync(device)
    startup = time.perf_counter() - t0
    res = timed_steps(step, args.batch_size, seconds, args.min_steps, device)
    res.update(workers=workers, startup_s=round(startup, 2))
    held.clear()
    return res


def extraction_section(args, device: torch.device, jpeg_root: Path, seconds: float) -> dict:
    """``extract_source`` (as ``mtdp extract``) vs the bare forward; the file list is repeated to
    ``--extract-images`` so that worker start-up weighs little, and the forward cycles over
    ``--extract-preload`` preloaded images."""
    unique = [str(p) for p in find_images(jpeg_root)]
    paths = (unique * (args.extract_images // len(unique) + 1))[: args.extract_images]
    source = make_source(paths, labels=True)
    precision = 'fp32' if device.type == 'cpu' else 'auto'
    extractor = FeatureExtractor(
        'random:mtdp_resnet50', img_size=args.img_size, device=str(device), precision=precision
    )
    n_pre = min(len(paths), args.extract_preload)
    preloaded = [
        torch.stack([extractor.transform(source.open(i)) for i in range(s, min(s + args.batch_size, n_pre))])
        for s in range(0, n_pre, args.batch_size)
    ]
    mf = torch.channels_last if extractor.channels_last else torch.contiguous_format
    preloaded = [x.to(device, memory_format=mf) for x in preloaded]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1
    variants_workers = {'extract': args.extract_workers}
    if args.extract_workers is None and args.workers != min(8, cpus):
        variants_workers['extract_all_cores'] = args.workers
    loop_rates: dict[str, list] = {name: [] for name in variants_workers}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / 'f.safetensors'

        def extract_with(name: str, workers):
            def run() -> int:
                stats = extract_source(
                    extractor,
                    source,
                    out,
                    batch_size=args.batch_size,
                    num_workers=workers,
                    overwrite=True,
                    progress=False,
                )
                loop_rates[name].append(stats['img_per_s'])
                return stats['n_new']

            return run

        @torch.inference_mode()
        def forward() -> int:
            done = 0
            with autocast(device, extractor.amp_dtype):
                while done < len(paths):
                    for x in preloaded:
                        extractor.model(x)
                        done += x.shape[0]
                        if done >= len(paths):
                            break
            return done

        variants = {name: extract_with(name, w) for name, w in variants_workers.items()}
        variants['forward'] = forward
        rates = interleaved_rates(
            variants,
            rounds=args.extract_rounds,
            warmup=1,
            device=device,
            deadline=time.perf_counter() + seconds,
        )
    r = ratios(rates, 'extract', 'forward')
    res = {
        'extract_img_per_s': round(rates['extract']['median'], 2),
        'forward_img_per_s': round(rates['forward']['median'], 2),
        **r,
        'target_ratio': 0.90,
        'target_met': r['ratio'] >= 0.90,
        'images': len(paths),
        'workers': args.extract_workers
        if args.extract_workers is not None
        else f'default: min(8, cpus) = {min(8, cpus)}',
        'extract_loop_img_per_s': loop_rates['extract'],
        'precision': str(extractor.amp_dtype).replace('torch.', '') if extractor.amp_dtype else 'fp32',
        'rounds': rates['extract']['rounds'],
    }
    if 'extract_all_cores' in rates:
        res['extract_all_cores'] = {
            'workers': args.workers,
            'img_per_s': round(rates['extract_all_cores']['median'], 2),
            **ratios(rates, 'extract_all_cores', 'forward'),
        }
    return res


def train_section(
    arch: str,
    args,
    device: torch.device,
    base: MultiTaskDataset,
    budget: Budget,
    amp_dtype,
    channels_last: bool,
    fused: bool,
    modes: list[str],
) -> dict:
    res: dict = {}
    if device.type == 'cuda':
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    trainer = Trainer(arch, args.tasks, device, amp_dtype, channels_last, args.compile, fused)
    x, y, t = synthetic_batch(
        args.batch_size, args.img_size, trainer.model.num_classes, device, channels_last
    )
    t0 = time.perf_counter()
    try:
        for _ in range(args.warmup_steps):  # includes the compilation
            trainer.step(x, y, t)
    except Exception as e:  # a compiler failure must not cost the figures: fall back to eager
        if not trainer.compiled:
            raise
        res['compile_error'] = f'{type(e).__name__}: {str(e)[:500]}'
        log(f'{arch}: torch.compile failed ({res["compile_error"]}); eager from here')
        trainer.eager()
        for _ in range(args.warmup_steps):
            trainer.step(x, y, t)
    sync(device)
    res['warmup_and_compile_s'] = round(time.perf_counter() - t0, 1)
    res['synthetic'] = timed_steps(
        lambda: trainer.step(x, y, t), args.batch_size, args.measure_s, args.min_steps, device
    )
    log(
        f'{arch}: synthetic {res["synthetic"]["img_per_s"]} img/s (warm-up incl. compile {res["warmup_and_compile_s"]} s)'
    )
    normalise = DeviceNormalise(device, torch.channels_last if channels_last else torch.contiguous_format)
    for mode in modes:
        need = args.measure_s + 20
        if not budget.fits(need):
            res[f'e2e_{mode}'] = {'skipped': f'time budget ({budget.left():.0f} s left, {need:.0f} s needed)'}
            continue
        try:
            res[f'e2e_{mode}'] = run_e2e(trainer, mode, base, args, device, normalise, args.measure_s)
            log(f'{arch}: end to end [{mode}] {res[f"e2e_{mode}"]["img_per_s"]} img/s')
        except Exception as e:  # one failing mode (e.g. no GPU JPEG decoder) must not lose the others
            res[f'e2e_{mode}'] = {'error': f'{type(e).__name__}: {e}'}
            log(f'{arch}: end to end [{mode}] failed: {type(e).__name__}: {e}')
    if device.type == 'cuda':
        res['peak_memory_gib'] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    e2e = {
        mode: res[f'e2e_{mode}']['img_per_s'] for mode in modes if 'img_per_s' in res.get(f'e2e_{mode}', {})
    }
    res['e2e_best_mode'] = max(e2e, key=e2e.get) if e2e else None
    res['e2e_best_img_per_s'] = e2e[res['e2e_best_mode']] if e2e else None
    return res


def overhead_section(
    arch: str, args, device: torch.device, amp_dtype, channels_last: bool, fused: bool, seconds: float
) -> dict:
    """Eager multi-task step (the training driver's) vs the same backbone with one head (the worst case: no compile)."""
    tasks = task_sizes(args.tasks)
    batch = synthetic_batch(
        args.overhead_batch_size, args.img_size, list(tasks.values()), device, channels_last
    )
    backbone = timm.create_model(arch, pretrained=False, num_classes=0)
    common = dict(amp_dtype=amp_dtype, compile_model=False, fused=fused)
    multi = multitask_setup(copy.deepcopy(backbone), tasks, batch, **common)
    single = single_head_setup(backbone, max(tasks.values()), batch, **common)

    def rounds_of(setup):
        return lambda: sum(setup() for _ in range(args.overhead_steps))

    rates = interleaved_rates(
        {'multitask': rounds_of(multi), 'single_head': rounds_of(single)},
        rounds=args.overhead_rounds,
        warmup=1,
        device=device,
        deadline=time.perf_counter() + seconds,
    )
    r = ratios(rates, 'multitask', 'single_head')
    return {
        'batch_size': batch[0].shape[0],
        'multitask_img_per_s': round(rates['multitask']['median'], 2),
        'single_head_img_per_s': round(rates['single_head']['median'], 2),
        **r,
        'target_ratio': 0.97,
        'target_met': r['ratio'] >= 0.97,
        'compile': False,
        'rounds': rates['multitask']['rounds'],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--device', default='cuda', help="'cuda' (default) or 'cpu' (with --smoke)")
    parser.add_argument(
        '--smoke',
        action='store_true',
        help='everything tiny (32 px, batch 4, no compile, a few steps): checks that it runs',
    )
    parser.add_argument('--archs', nargs='+', default=['resnet50', 'densenet121'])
    parser.add_argument('--tasks', type=int, default=22)
    parser.add_argument('--batch-size', type=int, default=256)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument(
        '--jpeg-size',
        type=int,
        nargs=2,
        default=None,
        metavar=('W', 'H'),
        help='synthetic JPEG size (default: img-size square, like the 224 px patches)',
    )
    parser.add_argument('--n-jpegs', type=int, default=4400, help='synthetic JPEGs (over the 22 tasks)')
    parser.add_argument(
        '--workers',
        type=int,
        default=None,
        help='DataLoader workers for the CPU-decode modes (default: CPUs - 1, at most 16)',
    )
    parser.add_argument(
        '--decode-workers', type=int, default=4, help='workers that read file bytes (gpu_decode)'
    )
    parser.add_argument(
        '--modes',
        nargs='+',
        default=['project', 'uint8', 'gpu_decode'],
        choices=['project', 'uint8', 'gpu_decode'],
    )
    parser.add_argument(
        '--compile',
        dest='compile',
        action='store_true',
        default=None,
        help='torch.compile the model (default: on, off with --smoke)',
    )
    parser.add_argument('--no-compile', dest='compile', action='store_false')
    parser.add_argument(
        '--amp',
        default='auto',
        choices=['auto', 'bf16', 'none'],
        help='autocast dtype (auto: bf16 on CUDA, none on the CPU, where bf16 is emulated and slow)',
    )
    parser.add_argument('--measure-s', type=float, default=12.0, help='seconds timed per measurement')
    parser.add_argument('--min-steps', type=int, default=5)
    parser.add_argument('--warmup-steps', type=int, default=5)
    parser.add_argument('--overhead-rounds', type=int, default=8)
    parser.add_argument('--overhead-batch-size', type=int, default=64, help="the paper's batch")
    parser.add_argument('--overhead-steps', type=int, default=3)
    parser.add_argument('--extract-images', type=int, default=16384, help='the JPEGs, repeated to this count')
    parser.add_argument(
        '--extract-preload', type=int, default=2048, help='preloaded images for the bare forward'
    )
    parser.add_argument('--extract-rounds', type=int, default=3)
    parser.add_argument('--extract-workers', type=int, default=None, help='default: as mtdp extract')
    parser.add_argument(
        '--budget-s',
        type=float,
        default=430.0,
        help='start no section that would not fit in this many seconds (gpu.sh kills at 470 s)',
    )
    parser.add_argument(
        '--threads',
        type=int,
        default=None,
        help='torch CPU threads in the main process (--smoke: 1, see BENCHMARKS.md)',
    )
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument(
        '--json', default=None, help='also write the summary here (default: $OUT/gpu.json if $OUT)'
    )
    return parser


def apply_smoke(args: argparse.Namespace) -> None:
    """``--smoke``: every section at toy size, so that a CPU checks the code paths in seconds."""
    if args.smoke:
        args.batch_size, args.overhead_batch_size, args.img_size, args.n_jpegs = 4, 4, 32, 44
        args.jpeg_size = args.jpeg_size or [48, 40]  # not square, larger: crop and resize have work
        args.compile = bool(args.compile)
        args.measure_s, args.min_steps, args.warmup_steps = 0.0, 2, 1
        args.overhead_rounds, args.overhead_steps = 2, 1
        args.extract_images, args.extract_preload, args.extract_rounds, args.extract_workers = 8, 8, 1, 0
        args.workers, args.decode_workers = 0, 0
        # One thread: on a shared CPU, two OpenMP threads with a busy neighbour ran a small step 30x slower.
        args.threads = args.threads or 1
        args.budget_s = 3600.0  # a smoke run checks that every section runs: skip none, however slow the CPU
    args.compile = True if args.compile is None else args.compile


def run_sections(
    args,
    device: torch.device,
    base: MultiTaskDataset,
    jpeg_root: Path,
    budget: Budget,
    summary: dict,
    amp_dtype,
    channels_last: bool,
    fused: bool,
) -> None:
    """Overhead, training and extraction sections in turn, each skipped when it would not fit the budget."""
    first, rest = args.archs[0], args.archs[1:]
    sections = [('overhead', first), ('train', first), ('extraction', None)] + [('train', a) for a in rest]
    for kind, arch in sections:
        # rough costs on one H100 (compilation included); DenseNet compiles slower than ResNet
        need = {'overhead': 20, 'train': 90 if arch == first else 150, 'extraction': 30}[kind]
        need = 1 if args.smoke else need
        key = f'{kind}_{arch}' if arch else kind
        if not budget.fits(need):
            result = {'skipped': f'time budget ({budget.left():.0f} s left, about {need} s needed)'}
        else:
            try:
                if kind == 'overhead':
                    result = overhead_section(
                        arch, args, device, amp_dtype, channels_last, fused, min(30.0, budget.left())
                    )
                elif kind == 'train':
                    result = train_section(
                        arch, args, device, base, budget, amp_dtype, channels_last, fused, args.modes
                    )
                else:
                    result = extraction_section(args, device, jpeg_root, min(40.0, budget.left()))
            except Exception as e:  # report and go on: the other sections are still worth having
                result = {'error': f'{type(e).__name__}: {e}'}
        if kind == 'train':
            summary['train'][arch] = result
        else:
            summary[f'multitask_overhead_{arch}' if kind == 'overhead' else 'extraction'] = result
        emit_line(key, result)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_smoke(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        parser.error('no CUDA device: use --device cpu --smoke to check the script on a CPU')
    if args.workers is None:
        args.workers = max(
            1,
            min(
                16,
                (len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 2)
                - 1,
            ),
        )
    cuda = device.type == 'cuda'
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    amp_dtype = torch.bfloat16 if args.amp == 'bf16' or (args.amp == 'auto' and cuda) else None
    channels_last = cuda or args.smoke
    fused = fused_available(device) if cuda else False
    budget = Budget(args.budget_s)
    card = torch.cuda.get_device_name(device) if cuda else 'cpu (no GPU)'
    log(f'device: {card}; torch {torch.__version__}, timm {timm.__version__}')
    summary: dict = {
        'benchmark': 'gpu',
        'card': card,
        'device': str(device),
        'smoke': args.smoke,
        'settings': {
            'batch_size': args.batch_size,
            'img_size': args.img_size,
            'tasks': args.tasks,
            'amp': 'bf16' if amp_dtype else 'none',
            'channels_last': channels_last,
            'compile': args.compile,
            'fused_sgd': fused,
            'workers': args.workers,
            'decode_workers': args.decode_workers,
            'measure_s': args.measure_s,
        },
        'train': {},
    }
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix='mtdp-gpu-bench-') as tmp:
        t0 = time.perf_counter()
        jpeg_size = tuple(args.jpeg_size) if args.jpeg_size else (args.img_size, args.img_size)
        spec = make_jpegs(Path(tmp), args.n_jpegs, jpeg_size, args.tasks, args.seed)
        pool = load_pool(spec, ['train'], None)
        base = MultiTaskDataset(pool, ['train'], args.img_size)
        summary['jpegs'] = {
            'count': len(base),
            'size': list(jpeg_size),
            'seconds': round(time.perf_counter() - t0, 1),
            'mean_kib': round(sum(p.stat().st_size for p in Path(tmp).rglob('*.jpg')) / len(base) / 1024, 1),
        }
        emit_line('jpegs', summary['jpegs'])

        run_sections(args, device, base, Path(tmp), budget, summary, amp_dtype, channels_last, fused)
    r50 = summary['train'].get('resnet50', {})
    summary['targets'] = {
        'resnet50_e2e_img_per_s': {
            'target': TARGET_E2E_RESNET50,
            'value': r50.get('e2e_best_img_per_s'),
            'met': bool(r50.get('e2e_best_img_per_s') and r50['e2e_best_img_per_s'] >= TARGET_E2E_RESNET50),
        },
        'paper_schedule_minutes_resnet50': (
            round(50_000 * 64 / r50['e2e_best_img_per_s'] / 60, 1) if r50.get('e2e_best_img_per_s') else None
        ),
    }
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
