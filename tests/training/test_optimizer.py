"""RAdam on the device against torch.optim.RAdam + StepLR, for single and seed-stacked parameters."""

from __future__ import annotations

import torch

from training.optimizer import RAdam, step_learning_rate


def test_radam_matches_torch_radam_with_step_decay_in_both_regimes():
    """rho_t <= 5 for the first steps (plain momentum) and > 5 after: 14 steps cover both, with a decay at 4."""
    torch.manual_seed(0)
    ours = [torch.randn(4, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    theirs = [p.clone().requires_grad_() for p in ours]
    opt = RAdam.create(ours)
    ref = torch.optim.RAdam(theirs, lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(ref, step_size=4, gamma=0.1)
    for _ in range(14):
        grads = [torch.randn_like(p) for p in ours]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        lr = step_learning_rate(opt.step_count + 1, 1e-2, 4, 0.1)
        assert abs(float(lr) - ref.param_groups[0]["lr"]) <= 1e-12 * ref.param_groups[0]["lr"]
        opt.step(lr)
        ref.step()
        sched.step()
        for p, q in zip(ours, theirs):
            assert torch.allclose(p, q.detach(), rtol=0, atol=1e-14)
    assert float(opt.step_count) == 14 and abs(ref.param_groups[0]["lr"] - 1e-5) < 1e-20


def test_stacked_parameters_update_like_one_optimiser_per_seed():
    torch.manual_seed(1)
    seeds = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    stacked = torch.stack(seeds).clone()
    opt_stacked = RAdam.create([stacked])
    opts = [RAdam.create([p]) for p in seeds]
    lr = torch.tensor(3e-3, dtype=torch.float64)
    for _ in range(8):
        grads = [torch.randn(6, dtype=torch.float64) for _ in seeds]
        stacked.grad = torch.stack(grads)
        opt_stacked.step(lr)
        for p, g, o in zip(seeds, grads, opts):
            p.grad = g
            o.step(lr)
    assert torch.equal(stacked, torch.stack(seeds))
    # Per-seed state out and back in.
    names = ["w"]
    states = [opt_stacked.state_of(k, names) for k in range(3)]
    fresh = RAdam.create([torch.zeros(3, 6, dtype=torch.float64)])
    fresh.load_states(states, names)
    assert torch.equal(fresh.exp_avg[0], opt_stacked.exp_avg[0]) and float(fresh.step_count) == 8
