"""reinforce.py against independent computations: a naive reward-to-go loop, the exact
gradient of a two-step MDP, CartPole's own physics limits, and a short learning run."""

import csv
import functools
import json
import math
import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import reinforce  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """What train() uses: tiny tensors are much faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- reward-to-go


def test_reward_to_go_hand_example():
    # One column, two episodes: [1, 2, 3] terminated, then [1, 1] truncated with V(s_final) = 10.
    rewards = torch.tensor([1.0, 2.0, 3.0, 1.0, 1.0])
    ends = torch.tensor([False, False, True, False, True])
    bootstrap = torch.tensor([0.0, 0.0, 0.0, 0.0, 10.0])
    g = reinforce.reward_to_go(rewards, ends, bootstrap, gamma=0.5)
    # 3; 2 + .5*3 = 3.5; 1 + .5*3.5 = 2.75 | 1 + .5*10 = 6; 1 + .5*6 = 4
    assert g.tolist() == [2.75, 3.5, 3.0, 4.0, 6.0]


def test_reward_to_go_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    T, N, gamma = 30, 5, 0.9
    rewards = torch.randn(T, N, generator=gen, dtype=torch.float64)
    ends = torch.rand(T, N, generator=gen) < 0.15
    bootstrap = torch.randn(T, N, generator=gen, dtype=torch.float64) * ends
    got = reinforce.reward_to_go(rewards, ends, bootstrap, gamma)
    want = torch.zeros(T, N, dtype=torch.float64)
    r, e, b = rewards.tolist(), ends.tolist(), bootstrap.tolist()
    for i in range(N):
        for t in range(T):
            # G_t = sum_{k=t}^{e} γ^(k−t) r_k + γ^(e−t+1) bootstrap_e, e = end of t's episode
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * r[k][i]
                if e[k][i]:
                    total += gamma ** (k - t + 1) * b[k][i]
                    break
                if k == T - 1:
                    break
                k += 1
            want[t, i] = total
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------- unbiasedness on a two-step MDP (γ = 1)
# s0 --a0--> s(1 + a0) --a1--> end, with r1 = R1[a0] and r2 = R2[s1, a1]; a tabular softmax
# policy θ[s, a]. J(θ) is a finite sum, so ∇J comes exactly from autograd on J.
R1 = torch.tensor([1.0, 0.0], dtype=torch.float64)
R2 = torch.tensor([[0, 0], [0.0, 3.0], [2.0, -1.0]], dtype=torch.float64)
OFFSET = 10.0  # a constant added to every reward: harmless in expectation, noisy without baseline
THETA = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.4, 0.6]], dtype=torch.float64)
N_GROUPS, GROUP = 100, 2000


def exact_grad():
    theta = THETA.clone().requires_grad_(True)
    pi = torch.softmax(theta, -1)
    j = sum(
        pi[0, a0] * (R1[a0] + OFFSET + (pi[1 + a0] * (R2[1 + a0] + OFFSET)).sum())
        for a0 in range(2)
    )
    (g,) = torch.autograd.grad(j, theta)
    return g, pi.detach()


@functools.cache
def sample_episodes(n, seed):
    gen = torch.Generator().manual_seed(seed)
    pi = torch.softmax(THETA, -1)
    a0 = torch.multinomial(pi[0].expand(n, 2), 1, generator=gen).squeeze(1)
    s1 = 1 + a0
    a1 = torch.multinomial(pi[s1], 1, generator=gen).squeeze(1)
    states = torch.stack([torch.zeros_like(s1), s1])  # (2, n)
    actions = torch.stack([a0, a1])
    rewards = torch.stack([R1[a0], R2[s1, a1]]) + OFFSET
    return states, actions, rewards


def grad_estimates(baseline, seed=0, v_table=None, action_dependent=False):
    """N_GROUPS independent REINFORCE estimates of ∇J, each from GROUP episodes, built with
    the script's reward_to_go, advantage_estimate and reinforce_loss."""
    states, actions, rewards = sample_episodes(N_GROUPS * GROUP, seed)
    ends = torch.tensor([False, True]).unsqueeze(1).expand_as(rewards)
    returns = reinforce.reward_to_go(rewards, ends, torch.zeros_like(rewards), 1.0)
    out = []
    for g in range(N_GROUPS):
        sl = slice(g * GROUP, (g + 1) * GROUP)
        theta = THETA.clone().requires_grad_(True)
        logp = torch.log_softmax(theta, -1)[states[:, sl], actions[:, sl]]
        values = v_table[states[:, sl]] if v_table is not None else None
        if action_dependent:  # a "baseline" that depends on a_t: the immediate reward
            values = rewards[:, sl]
        adv = reinforce.advantage_estimate(returns[:, sl], values, baseline, normalize=False)
        loss = reinforce.reinforce_loss(logp, adv)
        # The loss averages over both steps of every episode: −∇L = ∇J / 2.
        out.append(-2 * torch.autograd.grad(loss, theta)[0])
    return torch.stack(out)


def within(est, target, z=4.0):
    """|mean − target| < z standard errors in every component (z = 4: a false alarm has
    probability < 1e-4 per component under the normal approximation)."""
    mean, se = est.mean(0), est.std(0) / math.sqrt(len(est))
    return bool(((mean - target).abs() < z * se + 1e-12).all()), mean, se


def true_values():
    _, pi = exact_grad()
    r2 = R2 + OFFSET
    v12 = (pi[1:] * r2[1:]).sum(-1)
    v0 = (pi[0] * (R1 + OFFSET + v12)).sum()
    return torch.stack([v0, v12[0], v12[1]])


def test_reinforce_gradient_is_unbiased():
    g_true, _ = exact_grad()
    ok, mean, se = within(grad_estimates("none"), g_true)
    assert ok, f"REINFORCE mean {mean} vs exact {g_true} (se {se})"
    # The test has power: the error bars are a small fraction of the gradient, and an
    # action-dependent "baseline" (which is biased) is rejected.
    assert (4 * se).max() < 0.25 * g_true.abs().max()
    biased = grad_estimates("value", v_table=None, action_dependent=True)
    assert not within(biased, g_true)[0]


def test_no_gradient_flows_into_the_baseline():
    logp = torch.randn(5, requires_grad=True)
    values = torch.randn(5, requires_grad=True)
    adv = reinforce.advantage_estimate(torch.randn(5), values, "value", normalize=True)
    g_logp, g_values = torch.autograd.grad(
        reinforce.reinforce_loss(logp, adv), (logp, values), allow_unused=True
    )
    assert g_values is None
    torch.testing.assert_close(g_logp, -adv / 5)


def test_baselines_keep_the_mean_and_lower_the_variance():
    g_true, _ = exact_grad()
    plain = grad_estimates("none")  # same seed: the same sampled episodes for every variant
    for name, kwargs in (("mean", {}), ("value", {"v_table": true_values()})):
        with_b = grad_estimates(name, **kwargs)
        ok, mean, se = within(with_b - plain, torch.zeros_like(g_true))
        assert ok, f"baseline {name} moved the mean by {mean} (se {se})"
        assert within(with_b, g_true)[0]
        var_plain, var_b = plain.var(0).sum(), with_b.var(0).sum()
        assert var_b < 0.5 * var_plain, f"{name}: variance {var_b} vs {var_plain} without"


# ------------------------------------------------------------ rollouts on CartPole


def test_collect_episodes_one_complete_episode_per_env():
    torch.manual_seed(0)
    envs = reinforce.make_envs("CartPole-v1", 6, (gym.spaces.Discrete,))
    policy = reinforce.mlp(4, 2, 16, 0.01)
    b = reinforce.collect_episodes(envs, policy, torch.device("cpu"), seed=3)
    lengths = b["alive"].sum(0)
    for i in range(6):
        n = int(lengths[i])
        # alive is a prefix, the only end is its last step, and CartPole pays 1 per step
        assert b["alive"][:n, i].all() and not b["alive"][n:, i].any()
        assert b["ends"][:, i].nonzero().flatten().tolist() == [n - 1]
        assert b["rewards"][:, i].sum() == n
        # each observation is the previous step's next observation (no reset inside)
        torch.testing.assert_close(b["obs"][1:n, i], b["final_obs"][: n - 1, i])
        x, theta = b["final_obs"][n - 1, i, 0], b["final_obs"][n - 1, i, 2]
        failed = abs(x) > 2.4 or abs(theta) > 12 * 2 * math.pi / 360
        assert bool(b["truncated"][n - 1, i]) == (not failed) and (failed or n == 500)
    envs.close()


class ThreeStepEnv(gym.Env):
    """Pays 1 per step. With fall=True it terminates on step 3, the very step on which the
    time limit (max_episode_steps=3) truncates too, as when CartPole's pole falls on step 500.
    Its observations are float64 on purpose."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fall):
        self.fall, self.t = fall, 0

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.full(4, 0.5), {}

    def step(self, action):
        self.t += 1
        return np.full(4, 0.5), 1.0, self.fall and self.t == 3, False, {}


gym.register("test/FallsOnLimitStep-v0", ThreeStepEnv, max_episode_steps=3, kwargs={"fall": True})
gym.register("test/CutAtLimit-v0", ThreeStepEnv, max_episode_steps=3, kwargs={"fall": False})


@pytest.mark.parametrize("env_id,falls", [("test/FallsOnLimitStep-v0", True),
                                          ("test/CutAtLimit-v0", False)])  # fmt: skip
def test_terminal_step_on_the_time_limit_gets_no_bootstrap(env_id, falls):
    """Gymnasium reports terminated and truncated together when an episode ends on the limit's
    step: that state is terminal, so G_t adds no γ V(s_final); a pure time-limit cut does.
    Checked against G_t written out by hand for V ≡ 100, γ = 0.5, three steps."""
    envs = reinforce.make_envs(env_id, 2, (gym.spaces.Discrete,))
    b = reinforce.collect_episodes(envs, reinforce.mlp(4, 2, 8, 0.01), torch.device("cpu"), 0)
    envs.close()
    assert b["obs"].dtype == torch.float32  # float64 observations are cast for the networks
    g = reinforce.episode_returns(b, lambda obs: torch.full((len(obs), 1), 100.0), 0.5)
    g3 = 1.0 if falls else 1.0 + 0.5 * 100.0  # G of the last step: r, plus γ V only if cut
    expected = [1 + 0.5 * (1 + 0.5 * g3), 1 + 0.5 * g3, g3]
    np.testing.assert_allclose(g.view(3, 2).numpy(), np.array([expected, expected]).T)


def test_trains_on_float64_observations(tmp_path):
    summary, _ = run_train(
        tmp_path, "f64", env_id="test/CutAtLimit-v0", num_envs=2, total_timesteps=6
    )
    assert summary["global_step"] == 6 and summary["final_mean_return"] == 3.0


def run_train(tmp_path, name, **overrides):
    overrides = {"eval_episodes": 0, **overrides}
    args = reinforce.Args(output_dir=str(tmp_path / name), cuda=False, **overrides)
    return reinforce.train(args), args.output_dir


def read_params(out_dir):
    ckpt = torch.load(os.path.join(out_dir, "model.pt"))
    return ckpt["agent"]  # actor.* (the policy) and critic.* (V)


def test_same_seed_same_parameters(tmp_path):
    _, a = run_train(tmp_path, "a", total_timesteps=3000, seed=5)
    _, b = run_train(tmp_path, "b", total_timesteps=3000, seed=5)
    _, c = run_train(tmp_path, "c", total_timesteps=3000, seed=6)
    pa, pb, pc = read_params(a), read_params(b), read_params(c)
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert not all(torch.equal(pa[k], pc[k]) for k in pa)
    with open(os.path.join(a, "episodes.csv")) as fa, open(os.path.join(b, "episodes.csv")) as fb:
        assert fa.read() == fb.read()


def test_short_run_learns(tmp_path):
    """A seed's exact trajectory differs across CPU types, so the bound is one that every
    seed measured meets with room to spare: within 30k steps the best last-20 mean return
    was 108 at worst over 21 seeds, tuning seeds 1-10 (379, 486, 498, 372, 453, 474, 150,
    492, 450, 486) and held-out seeds 1001-1011 (500, 478, 499, 473, 494, 495, 108, 500, 493,
    492, 464; the first 30k steps of their benchmark runs, the same since nothing depends on
    the budget); measured 2026-11-22. A random policy scores about 22; the test asks for 50."""
    summary, out = run_train(tmp_path, "learn", total_timesteps=30_000, seed=1)
    with open(os.path.join(out, "episodes.csv")) as f:
        rows = list(csv.DictReader(f))
    returns = [float(r["episodic_return"]) for r in rows]
    assert max(np.convolve(returns, np.ones(20) / 20, "valid")) >= 50, summary
    steps = [int(r["global_step"]) for r in rows]
    assert steps == sorted(steps) and steps[-1] == summary["global_step"]
    assert set(summary) >= {"algo", "solved_at_step", "solved_at_s", "eval_mean_return"}


# ------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["--num-envs", "0"], "--num-envs"),
        (["--total-timesteps", "-1"], "--total-timesteps"),
        (["--learning-rate", "0"], "--learning-rate"),
        (["--value-learning-rate", "inf"], "--value-learning-rate"),
        (["--gamma", "1.5"], "--gamma"),
        (["--baseline", "median"], "--baseline"),
        (["--env-id", "Pendulum-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
    ],
)
def test_bad_input_is_one_line_error(tmp_path, argv, needle):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        reinforce.main([*argv, "--output-dir", str(out), "--no-cuda"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and needle in msg and "\n" not in msg
    assert not out.exists()


def test_bad_flag_from_the_shell_has_no_traceback():
    p = subprocess.run(
        [sys.executable, "reinforce.py", "--num-envs", "x"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert p.returncode != 0 and p.stderr.startswith("error: ") and "Traceback" not in p.stderr


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = reinforce.reinforce_loss

    def poisoned(logprob, adv):
        calls["n"] += 1
        loss = real(logprob, adv)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(reinforce, "reinforce_loss", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(SystemExit) as e:
        reinforce.main(["--output-dir", str(out), "--no-cuda"])
    msg = str(e.value.code)
    assert msg.startswith("error: ") and "iteration 3" in msg and "--learning-rate" in msg
    assert torch.load(out / "model.pt")["iteration"] == 2


# ------------------------------------------------------------------- progress and evaluation


def test_progress_reaches_100_percent_and_eval_checkpoint_alone_replays_it(tmp_path, capsys):
    """Iterations differ in length, so the progress line follows the steps: its percentages
    rise to a last line of 100% although the last batch overruns --total-timesteps. Then
    `--eval-checkpoint X` alone evaluates 10 episodes of the env recorded in X, the same
    greedy episodes as the evaluation at the end of training."""
    out = tmp_path / "run"
    reinforce.main(["--no-cuda", "--total-timesteps", "3000", "--output-dir", str(out)])
    stdout = capsys.readouterr().out
    percents = [int(p) for p in re.findall(r"^\[\s*(\d+)%\]", stdout, re.MULTILINE)]
    assert len(percents) >= 3 and percents == sorted(set(percents)) and percents[-1] == 100
    trained = json.loads(stdout.strip().splitlines()[-1])
    assert trained["global_step"] >= 3000 and trained["env_steps_simulated"] >= 3000
    ckpt = torch.load(out / "model.pt")
    assert ckpt["script"] == "reinforce.py" and ckpt["env_id"] == "CartPole-v1"
    assert {"agent", "args", "optimizer", "iteration"} <= ckpt.keys()
    reinforce.main(["--eval-checkpoint", str(out / "model.pt"), "--no-cuda"])
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["eval_episodes"] == 10 and evaluated["env_id"] == "CartPole-v1"
    assert evaluated["eval_mean_return"] == trained["eval_mean_return"]
