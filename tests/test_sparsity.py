"""SNIP scores and SNIPER masks: scores sum g*w before the absolute value, masks nest exactly
(with the per-tensor cap too), pruned weights stay exactly zero under Adam with weight decay,
revived weights restart from theta0, and norms and embeddings are never pruned."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ttsbench.models.layers import ChannelLayerNorm
from ttsbench.sparsity import (
    SparsityController,
    nonzero_count,
    prunable_parameters,
    prune_order,
    snip_scores,
    zero_fraction,
)


class TinyNet(nn.Module):
    """Every kind of parameter the rule must sort: embeddings, norms (one without "norm" in its
    name, as ESPnet's postnet BatchNorm `postnet.N.1`), weights and biases."""

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(10, 8)
        self.conv = nn.Conv1d(8, 16, 3, padding=1)
        self.norm = ChannelLayerNorm(16)
        self.postnet = nn.Sequential(nn.Conv1d(16, 16, 1), nn.BatchNorm1d(16))
        self.head = nn.Linear(16, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.conv(self.embedding(ids).transpose(1, 2))
        x = self.postnet(torch.relu(self.norm(x)))
        return self.head(x.mean(dim=2))


def regression_batches(count: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randint(0, 10, (4, 12), generator=generator), torch.randn(4, 4, generator=generator))
        for _ in range(count)
    ]


def regression_loss(model: nn.Module):
    return lambda batch: ((model(batch[0]) - batch[1]) ** 2).mean()


def scored_net(cap: float = 0.75) -> tuple[TinyNet, SparsityController]:
    torch.manual_seed(0)
    net = TinyNet()
    controller = SparsityController(prunable_parameters(net), max_param_sparsity=cap)
    controller.compute_scores(regression_loss(net), regression_batches(3))
    return net, controller


def test_norms_and_embeddings_are_never_prunable() -> None:
    names = [name for name, _ in prunable_parameters(TinyNet())]
    assert names == ["conv.weight", "conv.bias", "postnet.0.weight", "postnet.0.bias", "head.weight", "head.bias"]
    # skipping a submodule (the FastSpeech2 aligner) by prefix
    assert [n for n, _ in prunable_parameters(TinyNet(), skip_prefixes=("head",))][-1] == "postnet.0.bias"


def test_norm_and_embedding_values_survive_high_sparsity() -> None:
    net, controller = scored_net()
    protected = {n: p.detach().clone() for n, p in net.named_parameters() if n not in controller.names}
    controller.set_sparsity(0.7)
    assert set(protected) == {"embedding.weight", "norm.weight", "norm.bias", "postnet.1.weight", "postnet.1.bias"}
    for name, parameter in net.named_parameters():
        if name in protected:
            assert torch.equal(parameter, protected[name]), name


def test_snip_sums_gradient_times_weight_before_the_absolute_value() -> None:
    weight = nn.Parameter(torch.tensor([2.0, -3.0]))
    # d(loss)/dw = x, so g * w per batch is x * w; the two batches cancel for the first weight only
    batches = [torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 1.0])]
    (score,) = snip_scores([weight], lambda x: (weight * x).sum(), batches)
    torch.testing.assert_close(score, torch.tensor([0.0, 6.0]))
    assert weight.grad is None  # scoring leaves .grad alone


def test_prune_order_hits_targets_exactly_and_nests_with_the_cap_biting() -> None:
    generator = torch.Generator().manual_seed(0)
    # one tensor with far lower scores than the rest: a global threshold alone would empty it
    scores = [
        torch.rand(40, generator=generator) * 1e-3,
        torch.rand(5, 7, generator=generator),
        torch.rand(60, generator=generator),
    ]
    cap = 0.5
    ranks = prune_order(scores, max_param_sparsity=cap)
    total = sum(s.numel() for s in scores)
    previous = None
    for target in (0.05, 0.1, 0.2, 0.3, 0.4, 0.45):
        pruned = [r < round(target * total) for r in ranks]
        assert sum(int(p.sum()) for p in pruned) == round(target * total)
        for p in pruned:
            assert p.float().mean() <= cap + 1e-9  # the cap holds per tensor
        if previous is not None:
            for low, high in zip(previous, pruned):
                assert bool((high | ~low).all())  # pruned at the lower target => pruned at this one
        previous = pruned
    assert bool(previous[0].float().mean() == cap)  # the cap did bite
    # below the cap, one global threshold: every kept weight of an uncapped tensor outscores every pruned one
    pruned_scores = torch.cat([s[p] for s, p in zip(scores, previous)])
    kept_uncapped = torch.cat([s[~p] for s, p in zip(scores[1:], previous[1:])])
    assert kept_uncapped.min() >= pruned_scores.max()


def test_controller_masks_nest_and_sparsity_is_exact() -> None:
    net, controller = scored_net(cap=0.3)
    previous_zero = None
    for target in (0.05, 0.1, 0.2, 0.25):
        controller.set_sparsity(target)
        assert controller.actual_sparsity() == pytest.approx(target, abs=1 / controller.total)
        zero = [p == 0 for p in controller.controlled]
        assert all(z.float().mean() <= 0.3 + 1e-9 for z in zero)
        if previous_zero is not None:
            assert all(bool((now | ~before).all()) for before, now in zip(previous_zero, zero))
        previous_zero = zero
    with pytest.raises(ValueError, match="max_param_sparsity"):
        controller.set_sparsity(0.5)


def test_masked_weights_stay_exactly_zero_under_adam_with_weight_decay() -> None:
    net, controller = scored_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=0.1)
    loss_for = regression_loss(net)
    batches = regression_batches(6, seed=1)
    controller.set_sparsity(0.2)
    for batch in batches[:3]:  # dense-ish training builds Adam moments on weights pruned next
        optimizer.zero_grad()
        loss_for(batch).backward()
        optimizer.step()
        controller.apply_masks()
    controller.set_sparsity(0.5)
    masks = controller.keep_masks()
    for batch in batches[3:]:
        optimizer.zero_grad()
        loss_for(batch).backward()
        for parameter, keep in zip(controller.controlled, masks):
            assert bool((parameter.grad[~keep] == 0).all())  # the hooks masked the gradients
        optimizer.step()
        moved = sum(int((p[~keep] != 0).sum()) for p, keep in zip(controller.controlled, masks))
        assert moved > 0  # Adam's momentum still moves pruned weights...
        controller.apply_masks()
        for parameter, keep in zip(controller.controlled, masks):
            assert bool((parameter[~keep] == 0).all())  # ...so they are re-zeroed after each step
    assert float(zero_fraction(controller.controlled)) == pytest.approx(0.5, abs=1 / controller.total)


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW, torch.optim.RAdam])
def test_after_optimizer_step_skips_the_masks_only_while_that_changes_nothing(
    optimizer_class: type[torch.optim.Optimizer], monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = []
    for skipping in (True, False):
        net, controller = scored_net()
        optimizer = optimizer_class(net.parameters(), lr=1e-2, weight_decay=0.1)
        applied = []
        apply_masks = controller.apply_masks
        monkeypatch.setattr(controller, "apply_masks", lambda log=applied, apply=apply_masks: log.append(1) or apply())
        controller.set_sparsity(0.3)  # pruned before the first step
        for step, batch in enumerate(regression_batches(8, seed=3)):
            if step == 4:
                controller.set_sparsity(0.2)  # reviving weights keeps the skip
            if step == 6:
                controller.set_sparsity(0.4)  # pruning trained weights ends it
                applied_before = len(applied)
            optimizer.zero_grad()
            regression_loss(net)(batch).backward()
            optimizer.step()
            controller.after_optimizer_step() if skipping else controller.apply_masks()
        runs.append([p.detach().clone() for p in controller.controlled])
        if skipping:
            assert applied_before == 0 and len(applied) == 2  # skipped for 6 steps, then after every step
    for skipped, applied_always in zip(*runs):
        assert torch.equal(skipped, applied_always)
    assert controller.actual_sparsity() == pytest.approx(0.4, abs=1 / controller.total)


def test_after_a_checkpoint_load_the_masks_are_applied_after_every_step(monkeypatch: pytest.MonkeyPatch) -> None:
    net, controller = scored_net()
    controller.set_sparsity(0.3)
    controller.load_state_dict(controller.state_dict())
    applied = []
    monkeypatch.setattr(controller, "apply_masks", lambda: applied.append(1))
    controller.after_optimizer_step()
    assert applied == [1]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_nonzero_count_takes_both_signed_zeros_as_zero_and_nan_as_nonzero(dtype: torch.dtype) -> None:
    values = torch.tensor([0.0, -0.0, 1.0, -2.5, float("nan"), float("-inf"), 1e-30, -0.0], dtype=dtype)
    expected = 4 if dtype == torch.float16 else 5  # 1e-30 underflows to +0 in half precision
    assert int(nonzero_count(values)) == expected == int(torch.count_nonzero(values))
    strided = torch.randn(6, 5).mul_(torch.rand(6, 5) > 0.5).to(dtype).T  # a transposed view
    assert int(nonzero_count(strided)) == int(torch.count_nonzero(strided))


def test_mask_gradients_zeroes_dot_grad() -> None:
    net, controller = scored_net()
    controller.set_sparsity(0.4)
    for parameter in controller.controlled:
        parameter.grad = torch.ones_like(parameter)
    controller.mask_gradients()
    for parameter, keep in zip(controller.controlled, controller.keep_masks()):
        assert bool((parameter.grad[~keep] == 0).all()) and bool((parameter.grad[keep] == 1).all())


def test_revived_weights_restart_from_their_initial_values() -> None:
    net, controller = scored_net()
    theta0 = [p.detach().clone() for p in controller.controlled]
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    controller.set_sparsity(0.5)
    kept_at_half = [m.clone() for m in controller.keep_masks()]
    loss_for = regression_loss(net)
    for batch in regression_batches(3, seed=2):
        optimizer.zero_grad()
        loss_for(batch).backward()
        optimizer.step()
        controller.apply_masks()
    controller.set_sparsity(0.2)
    kept_at_fifth = controller.keep_masks()
    for parameter, initial, before, after in zip(controller.controlled, theta0, kept_at_half, kept_at_fifth):
        revived = after & ~before
        assert torch.equal(parameter[revived], initial[revived])
        assert not torch.equal(parameter[before], initial[before])  # the survivors trained
    controller.set_sparsity(0.0)
    assert controller.keep_masks() is None and controller.actual_sparsity() == 0.0


def test_ranking_survives_a_state_dict_round_trip() -> None:
    net, controller = scored_net()
    controller.set_sparsity(0.3)
    torch.manual_seed(5)
    other = TinyNet()  # different initial weights
    restored = SparsityController(prunable_parameters(other), 0.75)
    restored.load_state_dict(controller.state_dict())
    assert bool(restored.scored) and restored.target_sparsity == pytest.approx(0.3, abs=1 / restored.total)
    restored.set_sparsity(0.1)  # coming back from 0.3 restores the saved theta0, not `other`'s init
    for mine, theirs in zip(controller.keep_masks(), restored.keep_masks()):
        assert bool((theirs | ~mine).all())
    controller.set_sparsity(0.1)
    for mine, theirs in zip(controller.keep_masks(), restored.keep_masks()):
        assert torch.equal(mine, theirs)


def test_target_before_scoring_is_pending() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    controller = SparsityController(prunable_parameters(net))
    controller.set_sparsity(0.3)
    assert controller.pending_sparsity == 0.3 and controller.actual_sparsity() == 0.0
    controller.compute_scores(regression_loss(net), regression_batches(1))
    with pytest.raises(RuntimeError, match="already computed"):
        controller.compute_scores(regression_loss(net), regression_batches(1))


def test_backward_leaves_pruned_weights_with_zero_gradient_and_kept_ones_untouched() -> None:
    net, controller = scored_net()
    controller.set_sparsity(0.4)
    loss = regression_loss(net)(regression_batches(1, seed=2)[0])
    raw = torch.autograd.grad(loss, controller.controlled, retain_graph=True)  # .grad untouched: no mask
    for parameter in controller.controlled:  # accumulated onto an existing .grad, not only into a fresh one
        parameter.grad = torch.zeros_like(parameter)
    loss.backward()
    masked = 0
    for parameter, gradient, keep in zip(controller.controlled, raw, controller.keep_masks()):
        assert torch.equal(parameter.grad, torch.where(keep, gradient, torch.zeros_like(gradient)))
        masked += int((gradient[~keep] != 0).sum())
    assert masked > 0  # the raw gradient did reach pruned weights
