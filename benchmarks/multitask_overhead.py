"""Multi-task overhead: training-step img/s of the multi-task model vs the same backbone with one head.

Multi-task step: the training driver's own :class:`training.step.TrainStep` (``MultiTaskNet`` with T
routed linear heads -> ``multitask_loss`` -> backward -> head gradients x B/|B_i| -> SGD with
momentum 0.9 over the backbone and head parameter groups, :func:`training.recipe.sgd`).
Baseline step: the same timm backbone + one ``nn.Linear`` -> plain cross-entropy -> the same
backward/optimizer half (:func:`mtdp_hub.features.runtime.optimizer_step`) -> SGD with momentum
0.9. Same batch, same input size, synthetic tensors (no data loading). The two alternate in one
process (A, B, A, B, ...), and the figure is the median of the per-round img/s ratios (with the
ratio of the medians and of the best rounds beside it). Target: ratio >= 0.97.
``--heads-only`` replaces the backbone by (B, num_features) random features to time the head part
alone.

Defaults suit a GPU (224 px, batch 64, the paper's batch); on a CPU use e.g.
``python -m benchmarks.multitask_overhead --img-size 96 --batch-size 32 --rounds 12 --steps-per-round 1``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time

import timm
import torch
import torch.nn.functional as F
from torch import nn

from mtdp_hub.features.runtime import autocast, grad_scaler, optimizer_step
from training.model import MultiTaskNet
from training.recipe import sgd
from training.step import TrainStep

from .machine import emit
from .timing import interleaved_rates, ratios

# Class counts of the paper's 22 tasks (Table I; BoneMarrow 8): 81 classes in all.
PAPER_CLASSES = [3, 2, 2, 2, 2, 2, 3, 2, 2, 4, 2, 8, 2, 2, 2, 8, 9, 10, 2, 2, 2, 8]


def task_sizes(n_tasks: int) -> dict[str, int]:
    return {f'task{t:02d}': PAPER_CLASSES[t % len(PAPER_CLASSES)] for t in range(n_tasks)}


def fused_available(device: torch.device) -> bool:
    try:
        torch.optim.SGD([torch.zeros(1, device=device, requires_grad=True)], lr=0.1, fused=True)
        return True
    except (RuntimeError, TypeError, ValueError):
        return False


def synthetic_batch(
    batch: int, size: int, classes: list[int], device: torch.device, channels_last: bool, seed: int = 0
):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.randint(0, len(classes), (batch,), generator=g)
    y = (torch.rand(batch, generator=g) * torch.tensor(classes, dtype=torch.float)[t]).long()
    x = x.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, y.to(device), t.to(device)


class Setup:
    """One model + optimizer + its step function (``step()`` returns the batch size)."""

    def __init__(self, model: nn.Module, step, batch: int):
        self.model, self.step_fn, self.batch = model, step, batch

    def __call__(self) -> int:
        self.step_fn()
        return self.batch


def multitask_setup(
    backbone: nn.Module,
    tasks: dict[str, int],
    batch,
    lr: float = 1e-3,
    amp_dtype=None,
    compile_model: bool = False,
    fused: bool = False,
) -> Setup:
    """The training driver's step (:class:`training.step.TrainStep`) on a fixed batch."""
    x, y, t = batch
    model = MultiTaskNet(backbone, tasks).to(x.device, memory_format=_memory_format(x)).train()
    step = TrainStep(model, sgd(model, lr, fused=fused), device=x.device, amp_dtype=amp_dtype)
    if compile_model:
        step.forward = torch.compile(model)
    return Setup(model, lambda: step(x, y, t), x.shape[0])


class SingleHeadNet(nn.Module):
    def __init__(self, backbone: nn.Module, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, num_classes)

    def forward(self, x):
        return self.head(self.backbone(x))


def single_head_setup(
    backbone: nn.Module,
    num_classes: int,
    batch,
    lr: float = 1e-3,
    amp_dtype=None,
    compile_model: bool = False,
    fused: bool = False,
) -> Setup:
    """Baseline: the same backbone, one linear head, plain cross-entropy, SGD momentum 0.9."""
    x, y, _ = batch
    device = x.device
    model = SingleHeadNet(backbone, num_classes).to(device, memory_format=_memory_format(x)).train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, fused=fused or None)
    scaler = grad_scaler(device, amp_dtype)
    fwd = torch.compile(model) if compile_model else model
    y = y.clamp(max=num_classes - 1)

    def step():
        with autocast(device, amp_dtype):
            logits = fwd(x)
        optimizer_step(F.cross_entropy(logits.float(), y), opt, scaler)

    return Setup(model, step, x.shape[0])


class FeaturesIn(nn.Module):
    """``--heads-only``: a stand-in backbone whose input already is the (B, F) features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features
        self.scale = nn.Parameter(torch.ones(()))  # one parameter, so the optimizer has a backbone group

    def forward(self, x):
        return x * self.scale


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument('--arch', default='resnet50', help='timm architecture (resnet50, densenet121, ...)')
    parser.add_argument('--tasks', type=int, default=22, help='number of tasks T (class counts of the paper)')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--rounds', type=int, default=20, help='timed rounds per variant (interleaved)')
    parser.add_argument('--steps-per-round', type=int, default=2)
    parser.add_argument('--warmup', type=int, default=1, help='untimed rounds per variant first')
    parser.add_argument('--device', default='auto')
    parser.add_argument(
        '--amp',
        default='auto',
        choices=['auto', 'bf16', 'none'],
        help='autocast dtype (auto: bf16 on CUDA, none on CPU)',
    )
    parser.add_argument('--channels-last', default='auto', choices=['auto', 'yes', 'no'])
    parser.add_argument('--compile', action='store_true', help='torch.compile both models')
    parser.add_argument(
        '--heads-only',
        action='store_true',
        help='no backbone: (B, num_features) random features in, to time the head part alone',
    )
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--json', default=None, help='also write the result here')
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(
        'cuda'
        if args.device == 'auto' and torch.cuda.is_available()
        else 'cpu'
        if args.device == 'auto'
        else args.device
    )
    cuda = device.type == 'cuda'
    amp_dtype = torch.bfloat16 if args.amp == 'bf16' or (args.amp == 'auto' and cuda) else None
    channels_last = args.channels_last == 'yes' or (args.channels_last == 'auto' and cuda)
    fused = cuda and fused_available(device)

    tasks = task_sizes(args.tasks)
    classes = list(tasks.values())
    torch.manual_seed(0)
    backbone = timm.create_model(args.arch, pretrained=False, num_classes=0)
    batch = synthetic_batch(args.batch_size, args.img_size, classes, device, channels_last)
    if args.heads_only:
        backbone = FeaturesIn(backbone.num_features)
        batch = (torch.randn(args.batch_size, backbone.num_features, device=device), *batch[1:])
    common = dict(amp_dtype=amp_dtype, compile_model=args.compile, fused=fused)
    multi = multitask_setup(copy.deepcopy(backbone), tasks, batch, **common)
    single = single_head_setup(copy.deepcopy(backbone), max(classes), batch, **common)

    def rounds_of(setup: Setup):
        def run() -> int:
            return sum(setup() for _ in range(args.steps_per_round))

        return run

    t0 = time.perf_counter()
    rates = interleaved_rates(
        {'multitask': rounds_of(multi), 'single_head': rounds_of(single)},
        rounds=args.rounds,
        warmup=args.warmup,
        device=device,
    )
    r = ratios(rates, 'multitask', 'single_head')
    emit(
        {
            'benchmark': 'multitask_overhead',
            'arch': args.arch,
            'tasks': args.tasks,
            'batch_size': args.batch_size,
            'img_size': args.img_size,
            'device': str(device),
            'amp': str(amp_dtype).replace('torch.', '') if amp_dtype else 'none',
            'channels_last': channels_last,
            'compile': args.compile,
            'fused_sgd': fused,
            'rounds': args.rounds,
            'steps_per_round': args.steps_per_round,
            'multitask_img_per_s': round(rates['multitask']['median'], 2),
            'single_head_img_per_s': round(rates['single_head']['median'], 2),
            **r,
            'target_ratio': 0.97,
            'target_met': r['ratio'] >= 0.97,
            'heads_only': args.heads_only,
            'wall_s': round(time.perf_counter() - t0, 1),
            'rates': rates,
        },
        args.json,
    )
    return 0


if __name__ == '__main__':
    sys.exit(main())
