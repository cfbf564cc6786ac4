"""The training step on the device: bf16 / fp16 (gradient scaler), fused SGD, torch.compile,
checkpoint + resume, a process group of one rank, and no host sync per step.

A tiny real model (timm resnet18 at 64 px, three tasks) so that the whole file takes seconds on a
GPU. ``--gpu-device cpu`` runs each test's logic on the CPU with timm's ``test_resnet`` at 32 px
(fp16 convolutions are emulated there and slow), gloo instead of NCCL, and the dispatcher spy of
tests/training/test_recipe.py instead of CUDA's sync debug mode; compilation is marked slow.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mtdp_hub.features.pixels import Normalise
from training.checkpoint import load_checkpoint, save_checkpoint
from training.data import IMAGENET_MEAN, IMAGENET_STD
from training.model import MultiTaskNet
from training.recipe import lr_lambdas, sgd
from training.sampler import TaskUniformSampler
from training.state import restore_run_state, run_state
from training.step import LossWatch, TrainStep

from ..training.test_recipe import HostSyncSpy
from .conftest import needs_cuda

TASKS = {'two': 2, 'three': 3, 'five': 5}
MODEL = {'cuda': ('resnet18', 64), 'cpu': ('test_resnet', 32)}  # (timm architecture, input side)


@pytest.fixture(autouse=True)
def deterministic(monkeypatch):
    """cuDNN's deterministic kernels: a resumed or DDP step must equal the reference bit for bit."""
    monkeypatch.setattr(torch.backends.cudnn, 'deterministic', True)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    threads = torch.get_num_threads()
    torch.set_num_threads(min(threads, 2))
    yield
    torch.set_num_threads(threads)


def memory_format(device: torch.device) -> torch.memory_format:
    return torch.channels_last if device.type == 'cuda' else torch.contiguous_format


def make_net(device: torch.device, seed: int = 0) -> MultiTaskNet:
    torch.manual_seed(seed)
    net = MultiTaskNet(timm.create_model(MODEL[device.type][0], num_classes=0), TASKS)
    return net.to(device, memory_format=memory_format(device)).train()


def uint8_batch(device: torch.device, seed: int = 0):
    """What the DataLoader hands over: uint8 images, labels, task indices (CPU tensors)."""
    g = torch.Generator().manual_seed(seed)
    batch = 16 if device.type == 'cuda' else 8
    size = MODEL[device.type][1]
    x = torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)
    t = torch.arange(batch) % len(TASKS)
    y = (torch.rand(batch, generator=g) * torch.tensor(list(TASKS.values()), dtype=torch.float)[t]).long()
    return x, y, t


def on_device(batch, device: torch.device):
    x, y, t = batch
    if device.type == 'cuda':
        x, y, t = x.pin_memory(), y.pin_memory(), t.pin_memory()
    normalise = Normalise(IMAGENET_MEAN, IMAGENET_STD, device, memory_format(device))
    return normalise(x), y.to(device, non_blocking=True), t.to(device, non_blocking=True)


def make_step(net, device, amp_dtype, fused=None, lr=0.02, scheduler=True) -> TrainStep:
    opt = sgd(net, lr, head_lr_mult=2.0, fused=fused)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas(0, lr, lr, 2.0)) if scheduler else None
    return TrainStep(net, opt, device=device, amp_dtype=amp_dtype, scheduler=sched)


def params(net) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_amp_training_steps_are_finite_and_learn(gpu_device, amp):
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    net = make_net(gpu_device)
    step = make_step(net, gpu_device, dtype)
    assert step.scaler.is_enabled() == (dtype == torch.float16)
    batch = on_device(uint8_batch(gpu_device), gpu_device)
    losses = [step(*batch)[0] for _ in range(6)]
    losses = torch.stack(losses).float().cpu()
    assert torch.isfinite(losses).all(), losses
    assert losses[-2:].mean() < losses[0], losses  # the same batch, six steps: it fits it
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize('fused', [True, False])
def test_fp16_gradient_scaler_skips_an_overflowing_step_and_backs_off(gpu_device, fused):
    """An overflow (huge loss scale) leaves weights and momentum untouched and halves the scale; the
    next step updates the weights. Fused SGD takes the scaler's inf check on the device."""
    net = make_net(gpu_device)
    step = make_step(net, gpu_device, torch.float16, fused=fused, scheduler=False)
    batch = on_device(uint8_batch(gpu_device), gpu_device)
    step(*batch)
    assert step.scaler.get_scale() == 2.0**16
    step.scaler.update(new_scale=2.0**40)  # far past fp16's range: the gradients overflow
    weights = {k: v for k, v in params(net).items() if 'running' not in k and 'num_batches' not in k}
    momentum = {id(p): s['momentum_buffer'].clone() for p, s in step.optimizer.state.items()}
    step(*batch)
    assert step.scaler.get_scale() == 2.0**39  # backed off
    after = net.state_dict()
    for k, v in weights.items():
        assert torch.equal(after[k], v), f'{k} changed on a skipped step'
    for p, s in step.optimizer.state.items():
        assert torch.equal(s['momentum_buffer'], momentum[id(p)])
    step.scaler.update(new_scale=2.0**16)
    loss, _ = step(*batch)
    assert torch.isfinite(loss) and step.scaler.get_scale() == 2.0**16
    assert not torch.equal(net.heads['five'].weight, weights['heads.five.weight'])


def test_fused_sgd_is_the_default_on_cuda_and_equals_the_loop_sgd(gpu_device):
    nets = [make_net(gpu_device), make_net(gpu_device)]
    steps = [
        make_step(nets[0], gpu_device, None, fused=True),
        make_step(nets[1], gpu_device, None, fused=False),
    ]
    assert steps[0].optimizer.defaults['fused'] is True
    assert bool(sgd(nets[0], 0.1).defaults['fused']) == (gpu_device.type == 'cuda')
    batch = on_device(uint8_batch(gpu_device), gpu_device)
    for _ in range(3):
        losses = [s(*batch)[0] for s in steps]
        torch.testing.assert_close(losses[0], losses[1], rtol=1e-5, atol=1e-6)
    for (k, a), b in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def checkpoint_roundtrip(step, sampler, folder):
    path = save_checkpoint(run_state(2, step, sampler, 16), folder, 2)
    return load_checkpoint(path)


def test_checkpoint_and_resume_on_the_device_give_the_identical_next_step(gpu_device, tmp_path):
    """The run state written by training.checkpoint and restored on a fresh model and optimizer: the
    next step (loss, weights, momentum, loss scale) is the uninterrupted run's, bit for bit."""
    amp = torch.float16 if gpu_device.type == 'cuda' else None  # the scaler's state travels too
    batches = [on_device(uint8_batch(gpu_device, seed=s), gpu_device) for s in range(3)]
    net = make_net(gpu_device)
    step = make_step(net, gpu_device, amp)
    sampler = TaskUniformSampler([10, 20, 30], seed=0)
    for b in batches[:2]:
        step(*b)
    state = checkpoint_roundtrip(step, sampler, tmp_path)
    expected_loss, _ = step(*batches[2])

    fresh = make_net(gpu_device, seed=1)  # other initial weights: everything must come from the file
    resumed = make_step(fresh, gpu_device, amp)
    assert restore_run_state(state, resumed, TaskUniformSampler([10, 20, 30], seed=0)) == 2
    loss, _ = resumed(*batches[2])
    assert torch.equal(loss, expected_loss)
    for (k, a), b in zip(fresh.state_dict().items(), net.state_dict().values()):
        assert torch.equal(a, b), k
    assert resumed.scaler.get_scale() == step.scaler.get_scale()
    assert resumed.optimizer.param_groups[1]['lr'] == step.optimizer.param_groups[1]['lr']


def test_process_group_of_one_rank_trains_as_the_single_process(gpu_device, tmp_path):
    """NCCL (gloo on the CPU), world size 1, DDP and the all-reduced task counts: the same step."""
    backend = 'nccl' if gpu_device.type == 'cuda' else 'gloo'
    if not dist.is_available() or not dist.is_backend_available(backend):
        pytest.skip(f'torch.distributed backend {backend} unavailable')
    reference = make_net(gpu_device)
    net = copy.deepcopy(reference)
    batch = on_device(uint8_batch(gpu_device), gpu_device)
    ref_step = make_step(reference, gpu_device, None)
    ref_losses = [ref_step(*batch)[0] for _ in range(2)]

    kw = {'device_id': gpu_device} if gpu_device.type == 'cuda' else {}
    dist.init_process_group(backend, init_method=f'file://{tmp_path / "store"}', rank=0, world_size=1, **kw)
    try:

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            dist.all_reduce(t)
            return t

        step = make_step(net, gpu_device, None)
        step.all_reduce, step.world_size = all_reduce, dist.get_world_size()
        step.forward = DistributedDataParallel(
            net, device_ids=[gpu_device.index or 0] if gpu_device.type == 'cuda' else None
        )
        losses = [step(*batch)[0] for _ in range(2)]
        dist.barrier()
    finally:
        dist.destroy_process_group()
    for a, b in zip(losses, ref_losses):
        assert torch.equal(a, b)
    for (k, a), b in zip(net.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), k


def sync_free_steps(device: torch.device, step: TrainStep, batch, n: int = 3) -> list[str]:
    """Run ``n`` steps of the loop's per-step path (pinned uint8 -> Normalise -> TrainStep ->
    LossWatch) with every host sync an error on CUDA, or recorded by the dispatcher spy on the CPU."""
    watch = LossWatch(len(TASKS), device)
    on_device(batch, device)  # warm-up outside the check (allocator, cuDNN, lazy inits)
    step(*on_device(batch, device))
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode('error')
        try:
            for it in range(n):
                loss, counts = step(*on_device(batch, device))
                watch.add(loss, counts, it)
        finally:
            torch.cuda.set_sync_debug_mode('default')
        torch.cuda.synchronize(device)
        return []
    with HostSyncSpy() as spy:
        for it in range(n):
            loss, counts = step(*on_device(batch, device))
            watch.add(loss, counts, it)
    return spy.syncing


@pytest.mark.parametrize('amp', ['bf16', 'fp16'])
def test_train_step_never_syncs_with_the_host(gpu_device, amp):
    """No ``.item()``, ``bool(tensor)``, data-dependent shape or blocking copy in a step: under
    ``torch.cuda.set_sync_debug_mode('error')`` any of them raises. fp16 uses fused SGD (the
    default on CUDA), whose step takes the scaler's inf flag on the device."""
    dtype = {'bf16': torch.bfloat16, 'fp16': torch.float16}[amp]
    net = make_net(gpu_device)
    step = make_step(net, gpu_device, dtype, fused=True)
    assert sync_free_steps(gpu_device, step, uint8_batch(gpu_device)) == []
    assert torch.isfinite(step(*on_device(uint8_batch(gpu_device), gpu_device))[0])


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step(gpu_device):
    """``torch.compile`` of the model (what run.compile does) trains as the eager model, without
    recompiling from one batch to the next, and without host syncs once compiled (CUDA)."""
    pytest.importorskip('torch._dynamo')
    torch._dynamo.reset()
    nets = [make_net(gpu_device), make_net(gpu_device)]
    steps = [make_step(n, gpu_device, None) for n in nets]
    steps[1].forward = torch.compile(nets[1], dynamic=False)
    batches = [on_device(uint8_batch(gpu_device, seed=s), gpu_device) for s in range(3)]
    with torch._dynamo.config.patch(error_on_recompile=True):
        for b in batches:
            eager, compiled = (s(*b)[0] for s in steps)
            torch.testing.assert_close(compiled, eager, rtol=2e-3, atol=2e-3)
        for (k, a), b in zip(nets[1].state_dict().items(), nets[0].state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3, msg=k)
        if gpu_device.type == 'cuda':
            assert sync_free_steps(gpu_device, steps[1], uint8_batch(gpu_device)) == []


def test_sync_debug_mode_catches_a_host_sync(gpu_device):
    """The control of the test above: the same mode raises on an operation that syncs."""
    needs_cuda(gpu_device)
    t = torch.tensor([0, 2, 2], device=gpu_device)
    torch.cuda.set_sync_debug_mode('error')
    try:
        with pytest.raises(RuntimeError, match='synchroniz'):
            torch.bincount(t)
    finally:
        torch.cuda.set_sync_debug_mode('default')
