"""Tier 1: the RL math as pure functions, against torch.distributions and gradcheck."""

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from finetune.rl_math import (clipped_policy_loss, ddim_sigma, ddim_step, gaussian_kl,
                              gaussian_log_prob, normalize_advantages, reward_weights, x0_and_eps)

torch.manual_seed(0)
SHAPE = (3, 4, 5, 5)


def test_log_prob_matches_normal_summed_over_dims():
    x, mean = torch.randn(SHAPE), torch.randn(SHAPE)
    for std in (torch.tensor(0.3), torch.rand(3, 1, 1, 1) + 0.1):
        expected = Normal(mean, std.expand(SHAPE)).log_prob(x).flatten(1).sum(1)
        torch.testing.assert_close(gaussian_log_prob(x, mean, std), expected)


def test_kl_matches_torch_distributions():
    mp, mq, std = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor(0.7)
    expected = kl_divergence(Normal(mp, std.expand(SHAPE)), Normal(mq, std.expand(SHAPE))).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_kl(mp, mq, std), expected)
    assert torch.all(gaussian_kl(mp, mp, std) == 0)


@pytest.mark.parametrize("fn", [
    lambda x, m, s: gaussian_log_prob(x, m, s),
    lambda x, m, s: gaussian_kl(x, m, s),
])
def test_gradcheck(fn):
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    m = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    s = (torch.rand(2, 1, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, m, s))


@pytest.mark.parametrize("ptype", ["epsilon", "v_prediction", "sample"])
def test_x0_eps_invert_the_forward_process(ptype):
    x0, eps, abar = torch.randn(SHAPE), torch.randn(SHAPE), torch.tensor([0.9, 0.5, 0.1])
    a = abar.view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    target = {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[ptype]
    got_x0, got_eps = x0_and_eps(target, x_t, abar, ptype)
    torch.testing.assert_close(got_x0, x0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_eps, eps, atol=1e-5, rtol=1e-5)


def test_ddim_step_gradcheck_and_eta_zero_is_deterministic():
    out = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    f = lambda o, x: ddim_step(o, x, torch.tensor(0.4, dtype=torch.float64), torch.tensor(0.6, dtype=torch.float64), 1.0, "v_prediction").mean
    assert torch.autograd.gradcheck(f, (out, x))
    assert float(ddim_step(out, x, 0.4, 0.6, 0.0, "epsilon").std) == 0.0
    # eta = 1 is the DDPM posterior std: sqrt((1 - abar_prev) / (1 - abar_t) * beta_t)
    beta_t = 1 - 0.4 / 0.6
    torch.testing.assert_close(ddim_sigma(torch.tensor(0.4), torch.tensor(0.6), 1.0),
                               torch.tensor(((1 - 0.6) / (1 - 0.4) * beta_t) ** 0.5))


def test_clipped_policy_loss_min_form():
    old = torch.zeros(4)
    new = torch.log(torch.tensor([1.5, 0.5, 1.05, 1.0])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, 2.0])
    out = clipped_policy_loss(new, old, adv, clip_range=0.2)
    # min(r A, clip(r) A): 1.2, 0.5, -1.05, 2.0
    torch.testing.assert_close(out.loss, -torch.tensor([1.2, 0.5, -1.05, 2.0]).mean())
    assert out.clip_fraction.item() == 0.5
    out.loss.backward()
    # clipped sample with positive advantage above the band has no gradient; the one below keeps it
    assert new.grad[0] == 0 and new.grad[1] != 0 and new.grad[2] != 0
    r = torch.tensor([1.5, 0.5, 1.05, 1.0])
    torch.testing.assert_close(out.approx_kl, ((r - 1) - r.log()).mean())


def test_clipped_policy_loss_at_ratio_one_is_the_policy_gradient():
    logp = torch.randn(5, requires_grad=True)
    adv = torch.randn(5)
    clipped_policy_loss(logp, logp.detach(), adv, 0.1).loss.backward()
    torch.testing.assert_close(logp.grad, -adv / 5)


def test_normalize_advantages_per_group_and_batch():
    r = torch.tensor([1.0, 3.0, 10.0, 10.0, 5.0])
    g = torch.tensor([0, 0, 1, 1, 2])
    a = normalize_advantages(r, g, "group")
    torch.testing.assert_close(a[:2], torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)
    assert torch.all(a[2:] == 0)  # no spread in group 1, single sample in group 2
    b = normalize_advantages(r)
    torch.testing.assert_close(b.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(b.std(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)


def test_reward_weights():
    r = torch.tensor([-0.5, 0.2, 0.9])
    torch.testing.assert_close(reward_weights(r, "reward"), torch.tensor([0.0, 0.2, 0.9]))
    torch.testing.assert_close(reward_weights(r, "threshold", threshold=0.5), torch.tensor([0.0, 0.0, 1.0]))
    w = reward_weights(r, "exp", temperature=0.5)
    torch.testing.assert_close(w.mean(), torch.tensor(1.0))
    assert w[2] > w[1] > w[0]
    with pytest.raises(ValueError):
        reward_weights(r, "nope")


def test_normalize_advantages_batch_scale_keeps_group_means_and_batch_std():
    # Group 0: a real success among failures; group 1: a near-tie. "group" gives both the same
    # +-1 spread; "batch" keeps their sizes apart, on one scale for the whole batch.
    r = torch.tensor([3.0, 0.5, 0.5, 0.5, 0.75, 0.5, 0.75, 0.5])
    g = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    by_group = normalize_advantages(r, g, "group")
    torch.testing.assert_close(by_group[4:].abs(), torch.ones(4), atol=1e-4, rtol=0)
    a = normalize_advantages(r, g, "batch")
    mean = torch.tensor([1.125] * 4 + [0.625] * 4)
    torch.testing.assert_close(a, (r - mean) / r.std(unbiased=False), atol=1e-5, rtol=0)
    assert a[0] > 5 * a[4].abs()
    torch.testing.assert_close(normalize_advantages(r, None, "batch"), normalize_advantages(r), atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["kl", "chi2", "hellinger"])
def test_step_divergences_match_monte_carlo(kind):
    """Each f-divergence between two Gaussians with one sigma, against a Monte Carlo estimate from
    torch.distributions' densities: KL = E_p[log p/q], chi^2 = E_q[(p/q)^2] - 1,
    squared Hellinger = 1 - E_q[sqrt(p/q)]."""
    from finetune.rl_math import step_divergence

    g = torch.Generator().manual_seed(0)
    mp, mq, std = torch.tensor([[0.3, -0.2, 0.1]]), torch.tensor([[0.0, 0.1, -0.2]]), torch.tensor(0.5)
    p, q = Normal(mp[0], std), Normal(mq[0], std)
    n = 400_000
    if kind == "kl":
        x = mp[0] + std * torch.randn(n, 3, generator=g)
        mc = (p.log_prob(x) - q.log_prob(x)).sum(1).mean()
    else:
        x = mq[0] + std * torch.randn(n, 3, generator=g)
        ratio = (p.log_prob(x) - q.log_prob(x)).sum(1).exp()
        mc = (ratio ** 2).mean() - 1 if kind == "chi2" else 1 - ratio.sqrt().mean()
    exact = step_divergence(mp, mq, std, kind)
    assert exact.shape == (1,) and exact.item() == pytest.approx(mc.item(), rel=0.03)
    assert step_divergence(mp, mp, std, kind).item() == 0
    if kind == "kl":
        torch.testing.assert_close(exact, kl_divergence(p, q).sum()[None])


def test_chi2_weights_are_linear_in_the_reward_and_mean_one():
    r = torch.tensor([0.0, 0.5, 1.0, 3.0])
    w = reward_weights(r, "chi2", temperature=1.0)
    assert w.mean().item() == pytest.approx(1.0) and w[0] == 0  # 1 + (0 - 1.125) < 0: dropped
    torch.testing.assert_close(w[2] - w[1], (w[3] - w[2]) / 4)  # linear where positive


# ---------------------------------------------------------------------------------------------
# Flow matching: Flow-GRPO's SDE step, the ODE's Euler step, the interpolation and its target.

def _flow_schedule(steps: int = 6):
    """The sigmas of SD3's scheduler (shift 3) at ``steps`` steps: 1 first, 0 last."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
    sched.set_timesteps(steps)
    return sched


def test_flow_sde_log_prob_and_kl_match_torch_distributions():
    from torch.distributions import Independent

    from finetune.rl_math import flow_sde_step, step_divergence

    sigma, sigma_next = torch.tensor([1.0, 0.6, 0.2]), torch.tensor([0.8, 0.45, 0.0])
    x, v, v_base = torch.randn(SHAPE), torch.randn(SHAPE), torch.randn(SHAPE)
    p = flow_sde_step(v, x, sigma, sigma_next, noise_level=0.7)
    q = flow_sde_step(v_base, x, sigma, sigma_next, noise_level=0.7)
    assert p.std.shape == (3, 1, 1, 1) and torch.equal(p.std, q.std) and torch.all(p.std > 0)
    x_next = p.mean + p.std * torch.randn(SHAPE)
    dp = Independent(Normal(p.mean, p.std.expand(SHAPE)), 3)
    dq = Independent(Normal(q.mean, q.std.expand(SHAPE)), 3)
    torch.testing.assert_close(gaussian_log_prob(x_next, p.mean, p.std), dp.log_prob(x_next), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gaussian_kl(p.mean, q.mean, p.std), kl_divergence(dp, dq), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(step_divergence(p.mean, q.mean, p.std, "kl"), kl_divergence(dp, dq),
                               atol=1e-5, rtol=1e-5)


def test_flow_sde_at_noise_level_zero_is_the_ode_euler_step_exactly():
    """a = 0 gives diffusers' own Euler step bit for bit at every step (the first, sigma = 1,
    included), with std 0."""
    from finetune.rl_math import flow_ode_step, flow_sde_step

    sched = _flow_schedule()
    x = torch.randn(SHAPE)
    for i, t in enumerate(sched.timesteps):
        v = torch.randn(SHAPE)
        step = flow_sde_step(v, x, sched.sigmas[i], sched.sigmas[i + 1], noise_level=0.0)
        euler = sched.step(v, t, x).prev_sample
        assert torch.equal(step.mean, euler) and float(step.std) == 0.0
        assert torch.equal(flow_ode_step(v, x, sched.sigmas[i], sched.sigmas[i + 1]), euler)
        x = euler
    assert sched.sigmas[0] == 1.0


def _flow_grpo_sde_step(v, x, sigmas, i, noise_level, prev_sample):
    """flow_grpo/diffusers_patch/sd3_sde_with_logprob.py (yifan123/flow_grpo), transcribed: the
    mean, std_dev_t and the log-prob (averaged over dimensions there) of step i."""
    import math

    sigma, sigma_prev, sigma_max = sigmas[i].view(-1, 1, 1, 1), sigmas[i + 1].view(-1, 1, 1, 1), sigmas[1].item()
    dt = sigma_prev - sigma
    std_dev_t = torch.sqrt(sigma / (1 - torch.where(sigma == 1, sigma_max, sigma))) * noise_level
    prev_sample_mean = (x * (1 + std_dev_t**2 / (2 * sigma) * dt)
                        + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt)
    log_prob = (-((prev_sample.detach() - prev_sample_mean) ** 2) / (2 * ((std_dev_t * torch.sqrt(-1 * dt)) ** 2))
                - torch.log(std_dev_t * torch.sqrt(-1 * dt)) - torch.log(torch.sqrt(2 * torch.as_tensor(math.pi))))
    return prev_sample_mean, std_dev_t, log_prob.mean(dim=tuple(range(1, log_prob.ndim)))


def test_flow_sde_step_matches_flow_grpo():
    """Mean, std and log-prob against Flow-GRPO's own expressions at every step of SD3's schedule,
    the sigma = 1 guard included; Flow-GRPO averages the log-prob over dimensions, this sums."""
    from finetune.rl_math import flow_sde_std, flow_sde_step

    sigmas = _flow_schedule().sigmas.double()
    x = torch.randn(SHAPE, dtype=torch.float64)
    for i in range(len(sigmas) - 1):
        v = torch.randn(SHAPE, dtype=torch.float64)
        step = flow_sde_step(v, x, sigmas[i], sigmas[i + 1], noise_level=0.7)
        x_next = step.mean + step.std * torch.randn(SHAPE, dtype=torch.float64)
        mean, std_dev_t, log_prob = _flow_grpo_sde_step(v, x, sigmas, i, 0.7, x_next)
        torch.testing.assert_close(step.mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(flow_sde_std(sigmas[i], sigmas[i + 1], 0.7), std_dev_t.flatten()[0])
        torch.testing.assert_close(step.std, std_dev_t.flatten()[0] * (sigmas[i] - sigmas[i + 1]).sqrt())
        torch.testing.assert_close(gaussian_log_prob(x_next, step.mean, step.std), log_prob * x[0].numel())
        x = x_next


def test_flow_sde_keeps_the_ode_marginals():
    """The reason for the SDE's extra drift: with Gaussian data x0 ~ N(0, c^2) the exact velocity
    E[eps - x0 | x_sigma] = k(sigma) x_sigma is linear, so a step maps Var x to m^2 Var x + std^2
    with m the step's mean at x = 1; from pure noise (Var 1) the SDE ends at the data's variance
    c^2 as the ODE does, up to the Euler error; with the plain Euler drift and the same noise it
    would not."""
    from finetune.rl_math import flow_ode_step, flow_sde_step

    c2 = 0.25
    sigmas = torch.linspace(1, 0, 2001, dtype=torch.float64)
    one = torch.ones(1, 1, dtype=torch.float64)
    var_sde = var_ode = var_naive = torch.tensor(1.0, dtype=torch.float64)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        k = (s - (1 - s) * c2) / ((1 - s) ** 2 * c2 + s**2)
        step = flow_sde_step(k * one, one, s, s_next, noise_level=0.7)
        var_sde = step.mean**2 * var_sde + step.std**2
        m_ode = flow_ode_step(k * one, one, s, s_next)
        var_ode, var_naive = m_ode**2 * var_ode, m_ode**2 * var_naive + step.std**2
    assert var_ode.item() == pytest.approx(c2, rel=0.005)
    assert var_sde.item() == pytest.approx(c2, rel=0.005)
    assert var_naive.item() > 2 * c2


def test_flow_sde_mean_gradcheck():
    from finetune.rl_math import flow_sde_step

    v = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    sigma = torch.tensor([1.0, 0.5], dtype=torch.float64)
    sigma_next = torch.tensor([0.9, 0.3], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v, x: flow_sde_step(v, x, sigma, sigma_next, 0.7).mean, (v, x))


def test_flow_interpolation_target_and_inverse():
    """flow_noised is diffusers' scale_noise; the ODE stepped with the true target eps - x0 moves
    along the interpolation exactly; flow_x0_and_eps inverts it."""
    from finetune.rl_math import flow_noised, flow_ode_step, flow_velocity_target, flow_x0_and_eps

    sched = _flow_schedule()
    x0, eps = torch.randn(SHAPE), torch.randn(SHAPE)
    t = sched.timesteps[[1, 2, 4]]
    sigma = sched.sigmas[[1, 2, 4]]
    torch.testing.assert_close(flow_noised(x0, eps, sigma), sched.scale_noise(x0, t, eps))
    v = flow_velocity_target(x0, eps)
    x = flow_noised(x0, eps, sigma)
    torch.testing.assert_close(flow_ode_step(v, x, sigma, sched.sigmas[[2, 3, 5]]),
                               flow_noised(x0, eps, sched.sigmas[[2, 3, 5]]), atol=1e-6, rtol=1e-6)
    got_x0, got_eps = flow_x0_and_eps(v, x, sigma)
    torch.testing.assert_close(got_x0, x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(got_eps, eps, atol=1e-6, rtol=1e-6)
