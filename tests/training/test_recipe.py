"""Each point of the paper's recipe on its own (docs/paper.md §2.2-2.5)."""

from __future__ import annotations

import contextlib

import pytest
import timm
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from training.model import MultiTaskNet
from training.recipe import (
    head_grad_scale,
    lr_lambdas,
    multitask_loss,
    param_groups,
    recalibrate_batchnorm,
    sgd,
    task_counts,
)
from training.step import LossWatch, TrainStep

TASKS = {'two': 2, 'three': 3, 'five': 5}


def rescale_head_grads(model: MultiTaskNet, counts: torch.Tensor, batch_size) -> None:
    """The recipe's rescale written out, the reference of the fused one: after ``backward()``, head i's
    gradients x B/|B_i| (absent heads stay zero), one multiply per head parameter."""
    scale = head_grad_scale(counts, batch_size)
    for t, head in enumerate(model.heads.values()):
        for p in head.parameters():
            if p.grad is not None:
                p.grad.mul_(scale[t].to(p.grad.dtype))


def make_net(seed=0):
    torch.manual_seed(seed)
    return MultiTaskNet(timm.create_model('test_resnet', num_classes=0), TASKS)


def batch(seed=0, B=12):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, 32, 32, generator=g)
    t = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2][:B])
    y = torch.stack([torch.randint(0, [2, 3, 5][i], (1,), generator=g)[0] for i in t.tolist()])
    return x, y, t


def test_routing_gives_each_sample_its_own_heads_logits():
    net = make_net().eval()
    x, _, t = batch()
    out = net(x, t)
    feats = net.backbone(x)
    for i, ti in enumerate(t.tolist()):
        head = list(net.heads.values())[ti]
        c = head.out_features
        assert torch.allclose(out[i, :c], head(feats[i : i + 1])[0], atol=1e-6)
        assert torch.isinf(out[i, c:]).all()


def test_loss_is_per_sample_cross_entropy_averaged_over_the_whole_batch():
    net = make_net().eval()
    x, y, t = batch()
    loss = multitask_loss(net(x, t), y)
    feats = net.backbone(x)
    per_sample = []
    for i, ti in enumerate(t.tolist()):
        logits = list(net.heads.values())[ti](feats[i : i + 1])
        per_sample.append(F.cross_entropy(logits, y[i : i + 1]))
    expected = torch.stack(per_sample).sum() / len(y)  # 1/B sum_i sum_{j in B_i}, not a mean of task means
    assert torch.allclose(loss, expected, atol=1e-6)
    task_means = torch.stack(
        [torch.stack([p for p, ti in zip(per_sample, t.tolist()) if ti == k]).mean() for k in range(3)]
    ).mean()
    assert not torch.allclose(loss, task_means, atol=1e-4)  # the batches are unbalanced on purpose


def test_head_gradients_are_rescaled_by_B_over_B_i_and_backbone_untouched():
    net = make_net()
    x, y, t = batch()
    B = len(y)
    loss = multitask_loss(net(x, t), y)
    loss.backward()
    raw = {n: p.grad.clone() for n, p in net.named_parameters()}
    rescale_head_grads(net, task_counts(t, 3), B)
    counts = torch.bincount(t, minlength=3)
    for k, name in enumerate(TASKS):
        for pname in ('weight', 'bias'):
            g = net.heads[name].get_parameter(pname).grad
            assert torch.allclose(g, raw[f'heads.{name}.{pname}'] * B / counts[k])
    for n, p in net.backbone.named_parameters():
        assert torch.equal(p.grad, raw[f'backbone.{n}'])
    # The rescaled head gradient is the gradient of the per-task mean loss of that task.
    net2 = make_net()
    feats = net2.backbone(x).detach()
    mask = t == 2
    F.cross_entropy(net2.heads['five'](feats[mask]), y[mask]).backward()
    assert torch.allclose(net.heads['five'].weight.grad, net2.heads['five'].weight.grad, atol=1e-6)


def test_absent_task_head_gets_exact_zero_gradient():
    net = make_net()
    x, y, t = batch()
    t = torch.where(t == 1, torch.zeros_like(t), t)  # no task 'three' in the batch
    y = torch.where(t == 0, y.clamp(max=1), y)
    multitask_loss(net(x, t), y).backward()
    rescale_head_grads(net, task_counts(t, 3), len(y))
    assert torch.count_nonzero(net.heads['three'].weight.grad) == 0
    assert torch.isfinite(net.heads['two'].weight.grad).all()


def test_param_groups_backbone_at_gamma_heads_at_gamma_tau():
    net = make_net()
    groups = param_groups(net, 1e-4, 5.0)
    opt = torch.optim.SGD(groups, lr=1e-4, momentum=0.9)
    assert [g['name'] for g in opt.param_groups] == ['backbone', 'heads']
    assert opt.param_groups[0]['lr'] == 1e-4 and abs(opt.param_groups[1]['lr'] - 5e-4) < 1e-12
    assert all(g['momentum'] == 0.9 for g in opt.param_groups)
    ids = [{id(p) for p in g['params']} for g in opt.param_groups]
    assert ids[0] == {id(p) for p in net.backbone.parameters()}
    assert ids[1] == {id(p) for p in net.heads.parameters()}
    # Warm-up schedule: backbone LR 0 and heads at 1e-3 for the first N iterations, then gamma / gamma*tau.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambdas(3, 1e-3, 1e-4, 5.0))
    seen = []
    for _ in range(5):
        seen.append([g['lr'] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [round(b, 10) for b, _ in seen] == [0, 0, 0, 1e-4, 1e-4]
    assert [round(h, 10) for _, h in seen] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4]


def test_warmup_freezes_backbone_weights_and_bn_statistics():
    net = make_net()
    net.freeze_backbone()
    net.train()  # must keep the backbone in eval mode
    assert not net.backbone.training and net.heads.training
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in net.heads.state_dict().items()}
    opt = torch.optim.SGD(param_groups(net, 0.1, 1.0), lr=0.1, momentum=0.9)
    for s in range(3):
        x, y, t = batch(seed=s)
        opt.zero_grad()
        multitask_loss(net(x, t), y).backward()
        rescale_head_grads(net, task_counts(t, 3), len(y))
        opt.step()
    after = net.backbone.state_dict()
    for k, v in before.items():  # weights, BN running_mean/var and num_batches_tracked
        assert torch.equal(after[k], v), k
    assert any(not torch.equal(net.heads.state_dict()[k], v) for k, v in heads_before.items())
    assert all(p.grad is None for p in net.backbone.parameters())
    net.unfreeze_backbone()
    net.train()
    assert net.backbone.training and all(p.requires_grad for p in net.backbone.parameters())


def test_bn_recalibration_keeps_every_bn_output_and_sets_statistics_of_the_batches():
    net = make_net()
    bns = [m for m in net.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():  # ImageNet-like, non-trivial starting statistics
        for m in bns:
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.3, 0.3)
    net.eval()
    batches = [batch(seed=s)[0] * 2 + 0.5 for s in range(3)]  # shifted "pathology" inputs
    outputs = {}

    def grab(store):
        return [
            m.register_forward_hook(
                lambda mod, i, o, k=k: store.setdefault(k, []).append(
                    (i[0].detach().clone(), o.detach().clone())
                )
            )
            for k, m in enumerate(bns)
        ]

    hs = grab(outputs)
    ref = torch.cat([net.backbone(b) for b in batches]).detach()
    for h in hs:
        h.remove()
    n = recalibrate_batchnorm(net.backbone, batches)
    assert n == 3
    after = {}
    hs = grab(after)
    new = torch.cat([net.backbone(b) for b in batches]).detach()
    for h in hs:
        h.remove()
    assert torch.allclose(new, ref, atol=1e-4, rtol=1e-4)
    for k, m in enumerate(bns):
        assert torch.allclose(
            torch.cat([o for _, o in after[k]]), torch.cat([o for _, o in outputs[k]]), atol=1e-4, rtol=1e-4
        )
        inputs = torch.cat([i for i, _ in outputs[k]]).double()
        assert torch.allclose(m.running_mean.double(), inputs.mean(dim=(0, 2, 3)), atol=1e-5)
        var = inputs.transpose(0, 1).reshape(inputs.shape[1], -1).var(dim=1, unbiased=True)
        assert torch.allclose(m.running_var.double(), var, rtol=1e-4, atol=1e-6)
        assert int(m.num_batches_tracked) == 3
    # In train mode, the first BN now normalises these batches as ImageNet statistics did in eval mode.
    first = bns[0]
    first.train()
    x_in = torch.cat([i for i, _ in outputs[0]])
    ref_out = torch.cat([o for _, o in outputs[0]])
    assert torch.allclose(first(x_in), ref_out, atol=2e-2)


def test_task_counts_are_the_histogram_of_the_task_indices():
    t = torch.tensor([2, 0, 2, 2, 4, 0])
    assert task_counts(t, 6).tolist() == [2, 0, 3, 0, 1, 0]
    assert torch.equal(task_counts(t, 6), torch.bincount(t, minlength=6))
    assert task_counts(t, 6).dtype == torch.long


def test_head_rescale_in_the_backward_equals_the_rescale_after_it():
    """``model(x, t, head_grad_scale(...))``: the fused rescale gives the very same gradients."""
    x, y, t = batch()
    B = len(y)
    ref, net = make_net(), make_net()
    multitask_loss(ref(x, t), y).backward()
    rescale_head_grads(ref, task_counts(t, 3), B)
    out = net(x, t, head_grad_scale(task_counts(t, 3), B))
    assert torch.equal(out, ref(x, t))  # the forward is unchanged
    multitask_loss(out, y).backward()
    for (name, a), b in zip(net.named_parameters(), ref.parameters()):
        assert torch.equal(a.grad, b.grad), name
    assert net.state_dict().keys() == ref.state_dict().keys()
    assert {k for k in net.state_dict() if k.startswith('heads.')} == {
        f'heads.{n}.{p}' for n in TASKS for p in ('weight', 'bias')
    }


def recipe_step(net, optimizer, x, y, t, scheduler=None):
    """The recipe written out: forward, batch-mean CE, backward, rescale after it, SGD, schedule."""
    optimizer.zero_grad(set_to_none=True)
    loss = multitask_loss(net(x, t), y)
    loss.backward()
    rescale_head_grads(net, task_counts(t, len(net.heads)), len(y))
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    return loss.detach()


def test_train_step_equals_the_recipe_step_by_step():
    """Loss, every gradient and every update of TrainStep equal the recipe written out, bit for bit
    (momentum, two LR groups and the warm-up schedule; one batch lacks a task)."""
    nets = [make_net(), make_net()]
    opts = [sgd(n, 0.05, head_lr_mult=3.0, momentum=0.9) for n in nets]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lr_lambdas(2, 0.02, 0.05, 3.0)) for o in opts]
    step = TrainStep(nets[1], opts[1], device=torch.device('cpu'), amp_dtype=None, scheduler=scheds[1])
    for s in range(4):
        x, y, t = batch(seed=s)
        if s == 2:  # no task 'three' in this batch
            t = torch.where(t == 1, torch.zeros_like(t), t)
            y = torch.where(t == 0, y.clamp(max=1), y)
        expected = recipe_step(nets[0], opts[0], x, y, t, scheds[0])
        loss, counts = step(x, y, t)
        assert torch.equal(loss, expected) and torch.equal(counts, torch.bincount(t, minlength=3))
        for (name, a), b in zip(nets[1].named_parameters(), nets[0].parameters()):
            assert (a.grad is None) == (b.grad is None), name
            if a.grad is not None:
                assert torch.equal(a.grad, b.grad), name
        for (name, a), b in zip(nets[1].state_dict().items(), nets[0].state_dict().values()):
            assert torch.equal(a, b), name
    assert not torch.equal(nets[1].heads['two'].weight, make_net().heads['two'].weight)


class HostSyncSpy(TorchDispatchMode):
    """Records every ATen op that reads a value back to the host or sizes its output from the data
    (``.item()``, ``bool(t)``, ``int(t)``, ``nonzero``, ``bincount``, ``unique``, boolean masks...):
    on CUDA each of them waits for the device."""

    TAGS = (torch.Tag.data_dependent_output, torch.Tag.dynamic_output_shape)

    def __init__(self):
        super().__init__()
        self.syncing: list[str] = []
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(str(func.overloadpacket))
        if any(tag in func.tags for tag in self.TAGS):
            self.syncing.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def no_host_reads(monkeypatch):
    """A :class:`HostSyncSpy`, with ``.tolist()`` / ``.numpy()`` (which bypass the dispatcher) raising."""

    def refuse(self, *a, **k):
        raise AssertionError('host read of a tensor in the training step')

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, 'tolist', refuse)
        m.setattr(torch.Tensor, 'numpy', refuse)
        with HostSyncSpy() as spy:
            yield spy


def test_host_sync_spy_sees_what_it_must():
    with HostSyncSpy() as spy:
        t = torch.tensor([0, 2, 2])
        torch.bincount(t)
        bool(t.sum() > 0)
        t[t > 0]
    assert len(spy.syncing) >= 3, spy.syncing


@pytest.mark.parametrize('amp_dtype', [None, torch.bfloat16])
def test_train_step_never_reads_the_device_back(monkeypatch, amp_dtype):
    """No host sync in TrainStep (and LossWatch.add): on CUDA the step is enqueued and runs ahead."""
    net = make_net()
    device = torch.device('cpu')
    step = TrainStep(net, sgd(net, 0.01), device=device, amp_dtype=amp_dtype)
    watch = LossWatch(3, device)
    x, y, t = batch()
    step(x, y, t)  # first step: optimizer state created
    with no_host_reads(monkeypatch) as spy:
        for it in range(2):
            loss, counts = step(x, y, t)
            watch.add(loss, counts, it)
    assert spy.syncing == []
    assert {'aten.convolution_backward', 'aten.scatter_add_'} <= spy.seen  # it saw the backward and counts
