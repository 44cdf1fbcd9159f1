"""trpo.py checked against independent computations: torch.linalg.solve, autograd Hessians,
the closed-form Fisher matrix of a categorical policy, naive per-sample gradients, and a
replayed environment."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.func import functional_call

import trpo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """What train() uses: tiny tensors are much faster on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_policy(seed=0, in_dim=3, n_actions=4, hidden=5):
    """A small float64 policy with non-trivial logits (last-layer gain 1, not 0.01)."""
    torch.manual_seed(seed)
    return trpo.mlp(in_dim, n_actions, hidden, 1.0).double()


def logits_of(policy, theta, obs):
    """The policy's logits as a function of the flat parameter vector θ."""
    shapes = {name: p.shape for name, p in policy.named_parameters()}
    params, i = {}, 0
    for name, shape in shapes.items():
        params[name] = theta[i : i + shape.numel()].view(shape)
        i += shape.numel()
    return functional_call(policy, params, (obs,))


def theta_of(policy):
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def step(policy, obs, action, adv, max_kl, cg_iters, damping, tol, ls_steps):
    """trpo_step on the categorical policy `policy` (logits of a state), as train() calls it."""
    args = trpo.Args(max_kl=max_kl, cg_iters=cg_iters, cg_damping=damping, cg_tol=tol,
                     line_search_steps=ls_steps)  # fmt: skip
    kinds = trpo.categorical_log_prob, trpo.categorical_kl
    return trpo.trpo_step(list(policy.parameters()), lambda o: (policy(o),), *kinds, obs, action,
                          adv, args)  # fmt: skip


def cartpole_batch(policy, n=256, seed=0, dtype=torch.float64):
    """Observations from a random CartPole walk, actions sampled from `policy`, random Â."""
    envs = gym.make_vec("CartPole-v1", 8, "vector_entry_point")
    obs, _ = envs.reset(seed=seed)
    rows = []
    rng = np.random.default_rng(seed)
    while len(rows) * 8 < n:
        rows.append(obs)
        obs, *_ = envs.step(rng.integers(0, 2, 8))
    obs = torch.as_tensor(np.concatenate(rows)[:n], dtype=dtype)
    with torch.no_grad():
        action = torch.multinomial(torch.softmax(policy(obs), -1), 1).squeeze(-1)
    adv = torch.as_tensor(rng.normal(size=n), dtype=dtype)
    return obs, action, (adv - adv.mean()) / adv.std()


# ---------------------------------------------------------------- conjugate gradient


@pytest.mark.parametrize("n", [2, 7, 30])
def test_conjugate_gradient_matches_linalg_solve_within_n_iterations(n):
    rng = np.random.default_rng(n)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    A = torch.as_tensor(q @ np.diag(rng.uniform(0.5, 5.0, n)) @ q.T)  # SPD, condition <= 10
    b = torch.as_tensor(rng.normal(size=n))
    calls = []

    def matvec(v):
        calls.append(1)
        return A @ v

    x = trpo.conjugate_gradient(matvec, b, iters=n, tol=1e-10)
    assert len(calls) <= n
    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-8, atol=1e-8)
    assert (b - A @ x).norm() <= 1e-8 * b.norm()


def test_conjugate_gradient_stops_at_the_tolerance():
    """A = c·I is solved exactly by the first iteration; the residual test then stops it."""
    calls = []

    def matvec(v):
        calls.append(1)
        return 3.0 * v

    b = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x = trpo.conjugate_gradient(matvec, b, iters=50, tol=1e-10)
    assert len(calls) == 1
    torch.testing.assert_close(x, b / 3.0)


# ---------------------------------------------------------------- KL, surrogate, Fisher


def test_categorical_kl_matches_torch_distributions():
    p, q = torch.randn(10, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    expected = torch.distributions.kl_divergence(
        torch.distributions.Categorical(logits=p), torch.distributions.Categorical(logits=q)
    )
    torch.testing.assert_close(trpo.categorical_kl(p, q), expected)


def test_surrogate_gradient_at_theta_old_is_the_policy_gradient():
    """∇_θ L at θ_old = (1/B) Σ_i ∇_θ log π_θ(a_i|s_i) Â_i, summed one sample at a time."""
    policy = tiny_policy(1)
    obs = torch.randn(9, 3, dtype=torch.float64)
    action = torch.randint(0, 4, (9,))
    adv = torch.randn(9, dtype=torch.float64)
    with torch.no_grad():
        logp_old = torch.log_softmax(policy(obs), -1)[torch.arange(9), action]
    logp = trpo.categorical_log_prob(action, policy(obs))
    surr = trpo.surrogate_advantage(logp, logp_old, adv)
    assert surr.item() == pytest.approx(adv.mean().item())  # the ratio is 1 at θ_old
    g = torch.cat([x.flatten() for x in torch.autograd.grad(surr, list(policy.parameters()))])
    naive = torch.zeros_like(g)
    for i in range(9):
        logp_i = torch.log_softmax(policy(obs[i]), -1)[action[i]]
        grads = torch.autograd.grad(logp_i, list(policy.parameters()))
        naive += torch.cat([x.flatten() for x in grads]) * adv[i] / 9
    torch.testing.assert_close(g, naive)


def test_fisher_vector_product_equals_kl_hessian_and_analytic_fisher_times_v():
    policy = tiny_policy(2)
    obs = torch.randn(6, 3, dtype=torch.float64)
    theta0 = theta_of(policy)
    with torch.no_grad():
        p_old = torch.softmax(policy(obs), -1)

    def mean_kl(theta):
        # KL̄(θ) = mean_s Σ_a p_old(a|s) (log p_old(a|s) − log π_θ(a|s)), written out by hand
        logq = torch.log_softmax(logits_of(policy, theta, obs), -1)
        return (p_old * (p_old.log() - logq)).sum(-1).mean()

    H = torch.autograd.functional.hessian(mean_kl, theta0)
    # Closed form for logits z(s; θ): F = mean_s J_sᵀ (diag(p_s) − p_s p_sᵀ) J_s, J_s = ∂z/∂θ
    J = torch.autograd.functional.jacobian(lambda t: logits_of(policy, t, obs), theta0)
    F_analytic = sum(
        J[i].T @ (torch.diag(p_old[i]) - torch.outer(p_old[i], p_old[i])) @ J[i]
        for i in range(len(obs))
    ) / len(obs)
    torch.testing.assert_close(H, F_analytic, rtol=1e-8, atol=1e-10)

    damping = 0.1
    logits = policy(obs)  # KL̄ at θ_old with π_θold held fixed, as natural_step builds it
    kl = trpo.categorical_kl(logits.detach(), logits).mean()
    fvp = trpo.fisher_vector_product(kl, list(policy.parameters()), damping)
    for seed in range(3):
        v = torch.randn(
            len(theta0), dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
        )
        torch.testing.assert_close(fvp(v), H @ v + damping * v, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(fvp(v), F_analytic @ v + damping * v, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------- the TRPO step


def explicit_fisher(policy, obs):
    theta0 = theta_of(policy)
    with torch.no_grad():
        p_old = torch.softmax(policy(obs), -1)

    def mean_kl(theta):
        logq = torch.log_softmax(logits_of(policy, theta, obs), -1)
        return (p_old * (p_old.log() - logq)).sum(-1).mean()

    return torch.autograd.functional.hessian(mean_kl, theta0)


@pytest.mark.parametrize("max_kl", [1e-4, 0.01])
def test_step_scaling_puts_the_quadratic_model_on_the_trust_region_boundary(max_kl):
    """The accepted step Δθ = 2^-(k-1) β s, so ½ Δθᵀ(F + damping·I)Δθ = δ·4^-(k-1), with F the
    explicit autograd Hessian of the mean KL (k = line-search steps taken)."""
    policy = tiny_policy(3, in_dim=4, n_actions=2)
    obs, action, adv = cartpole_batch(policy, n=64, seed=3)
    damping = 0.1
    F_full = explicit_fisher(policy, obs) + damping * torch.eye(len(theta_of(policy)))
    theta0 = theta_of(policy)
    stats = step(policy, obs, action, adv, max_kl, 10, damping, 1e-10, 10)
    assert stats["accepted"] == 1.0
    delta = theta_of(policy) - theta0
    k = stats["line_search_steps"]
    assert 0.5 * delta @ F_full @ delta == pytest.approx(max_kl * 0.25 ** (k - 1), rel=1e-6)
    if max_kl == 1e-4:  # the quadratic model is accurate for small steps: the full step passes
        assert k == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_update_stays_in_trust_region_and_improves_surrogate(seed):
    """On a fixed batch, the real mean KL after one update is <= δ, and the surrogate did not
    decrease; both measured here with torch.distributions and probability ratios."""
    torch.manual_seed(seed)
    policy = trpo.mlp(4, 2, 64, 0.01)
    obs, action, adv = cartpole_batch(policy, n=1024, seed=seed, dtype=torch.float32)
    with torch.no_grad():
        old = torch.distributions.Categorical(logits=policy(obs))
    max_kl = 0.01
    stats = step(policy, obs, action, adv, max_kl, 10, 0.1, 1e-8, 10)
    with torch.no_grad():
        new = torch.distributions.Categorical(logits=policy(obs))
    kl = torch.distributions.kl_divergence(old, new).mean().item()
    ratio = torch.exp(new.log_prob(action) - old.log_prob(action))
    assert stats["accepted"] == 1.0 and 0 < kl <= max_kl * (1 + 1e-4)
    assert (ratio * adv).mean().item() >= adv.mean().item()
    assert kl == pytest.approx(stats["kl"], rel=1e-3)


def test_failed_line_search_keeps_parameters():
    """With a tiny δ no candidate changes the float32 surrogate, so none improves it: every
    candidate is rejected and θ_old comes back bit for bit."""
    torch.manual_seed(0)
    policy = trpo.mlp(4, 2, 64, 0.01)
    obs, action, adv = cartpole_batch(policy, n=256, dtype=torch.float32)
    before = theta_of(policy).clone()
    stats = step(policy, obs, action, adv, 1e-30, 10, 0.1, 1e-8, 5)
    assert stats["accepted"] == 0.0 and stats["line_search_steps"] == 5
    assert torch.equal(theta_of(policy), before)


def test_zero_advantages_give_no_step():
    """A contrived batch with Â = 0: g = 0, no direction, and the parameters stay."""
    torch.manual_seed(0)
    policy = trpo.mlp(4, 2, 64, 0.01)
    obs, action, adv = cartpole_batch(policy, n=128, dtype=torch.float32)
    before = theta_of(policy).clone()
    stats = step(policy, obs, action, torch.zeros_like(adv), 0.01, 10, 0.1, 1e-8, 10)
    assert stats["accepted"] == 0.0 and stats["line_search_steps"] == 0
    assert torch.equal(theta_of(policy), before)


# ---------------------------------------------------------------- rollout and batch


def test_rollout_masks_reset_steps_and_keeps_final_observation():
    """Replay the same seeded environment step by step, independently of rollout(): the
    step after every episode end is invalid (the autoreset step), every real transition is
    valid, and at a truncation the next buffer row is the true final observation."""
    torch.manual_seed(0)
    envs = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=7)
    agent = trpo.Agent(4, 2, 8)
    obs, _ = envs.reset(seed=3)
    b, _, _ = trpo.rollout(agent, envs, obs, np.zeros(4, bool), 30, torch.device("cpu"))

    replay = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=7)
    o, _ = replay.reset(seed=3)
    prev_done = np.zeros(4, bool)
    saw_trunc = saw_reset = False
    for t in range(30):
        np.testing.assert_array_equal(b["obs"][t].numpy(), o)
        np.testing.assert_array_equal(b["valid"][t].numpy(), ~prev_done)
        o, rew, term, trunc, _ = replay.step(b["action"][t].numpy())
        np.testing.assert_array_equal(b["reward"][t].numpy(), rew)
        np.testing.assert_array_equal(b["terminated"][t].numpy(), term)
        np.testing.assert_array_equal(b["done"][t].numpy(), term | trunc)
        for n in np.flatnonzero(trunc & ~term):
            saw_trunc = True
            np.testing.assert_array_equal(b["obs"][t + 1, n].numpy(), o[n])
        saw_reset |= prev_done.any()
        prev_done = term | trunc
    assert saw_trunc and saw_reset


def test_update_batch_excludes_reset_steps(monkeypatch, tmp_path):
    """The rows that reach trpo_step and fit_critic are exactly the valid ones."""
    sizes, valid_counts = [], []
    real_step, real_rollout, real_fit = trpo.trpo_step, trpo.rollout, trpo.fit_critic

    def counting_rollout(*a, **k):
        b, obs, prev_done = real_rollout(*a, **k)
        valid_counts.append(int(b["valid"].sum()))
        return b, obs, prev_done

    def recording_step(params, policy, log_prob, kl, obs, *a):
        sizes.append(len(obs))
        return real_step(params, policy, log_prob, kl, obs, *a)

    def recording_fit(critic, optimizer, obs, returns, *a):
        assert len(obs) == len(returns) == sizes[-1]
        return real_fit(critic, optimizer, obs, returns, *a)

    monkeypatch.setattr(trpo, "rollout", counting_rollout)
    monkeypatch.setattr(trpo, "trpo_step", recording_step)
    monkeypatch.setattr(trpo, "fit_critic", recording_fit)
    args = trpo.Args(total_timesteps=3072, critic_epochs=1, eval_episodes=0, cuda=False,
                     output_dir=str(tmp_path))  # fmt: skip
    trpo.train(args)
    assert sizes == valid_counts and min(valid_counts) < 1024  # some steps were resets


# ---------------------------------------------------------------- end to end


def run_main(capsys, *argv):
    try:
        trpo.main(list(argv))
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        print(e.code, file=sys.stderr)  # what the interpreter would print for sys.exit(str)
    out, err = capsys.readouterr()
    return code, out, err


def test_determinism(tmp_path):
    out = []
    for name in ("a", "b"):
        args = trpo.Args(total_timesteps=2048, eval_episodes=0, cuda=False,
                         output_dir=str(tmp_path / name))  # fmt: skip
        trpo.train(args)
        out.append(torch.load(tmp_path / name / "model.pt")["agent"])
    for key in out[0]:  # actor.* (the policy) and critic.*
        assert torch.equal(out[0][key], out[1][key]), key
    assert (tmp_path / "a/episodes.csv").read_text() == (tmp_path / "b/episodes.csv").read_text()


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--num-envs", "0"], "--num-envs"),
        (["--num-steps", "-1"], "--num-steps"),
        (["--max-kl", "0"], "--max-kl"),
        (["--cg-iters", "0"], "--cg-iters"),
        (["--cg-tol", "1"], "--cg-tol"),  # |r_0| <= |g|: CG would never iterate
        (["--critic-minibatch-size", "0"], "--critic-minibatch-size"),
        (["--gae-lambda", "1.5"], "--gae-lambda"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--seed", "-1"], "--seed"),
        (["--env-id", "Pendulum-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
        (["--max-kl", "x"], "--max-kl"),
        (["--eval-checkpoint", "missing.pt"], "--eval-checkpoint"),
    ],
)
def test_bad_input_one_line_error(flags, named, tmp_path, capsys):
    code, _, err = run_main(capsys, *flags, "--output-dir", str(tmp_path))
    assert code != 0 and err.count("error:") == 1 and named in err
    assert err.strip().count("\n") == 0 and not (tmp_path / "model.pt").exists()


TINY = ["--no-cuda", "--num-envs", "4", "--num-steps", "64", "--critic-epochs", "2"]


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A NaN in iteration 2 stops training, naming a flag to lower; model.pt holds iteration
    1's weights, the same as a clean one-iteration run writes."""
    one = ["--total-timesteps", "256", "--eval-episodes", "0", "--output-dir"]
    assert run_main(capsys, *TINY, *one, str(tmp_path / "one"))[0] == 0
    calls, real_fit = [], trpo.fit_critic

    def fit_then_nan(*a):
        calls.append(1)
        return real_fit(*a) if len(calls) == 1 else float("nan")

    monkeypatch.setattr(trpo, "fit_critic", fit_then_nan)
    code, _, err = run_main(
        capsys, *TINY, "--total-timesteps", "1024", "--output-dir", str(tmp_path / "bad")
    )
    assert code != 0 and err.count("error:") == 1 and "--learning-rate" in err
    good, bad = (torch.load(tmp_path / f"{d}/model.pt")["agent"] for d in ("one", "bad"))
    for key in good:  # actor.* (the policy) and critic.*
        assert torch.equal(good[key], bad[key]), key
    assert (tmp_path / "bad" / "episodes.csv").exists()


def test_run_files_progress_and_eval_checkpoint_alone(tmp_path, capsys):
    """A run names its folder first, prints ~10 progress lines ending at 100%, saves
    model.pt; a second run there is refused without --overwrite; --eval-checkpoint alone
    evaluates 10 episodes of the env recorded in the checkpoint."""
    out = str(tmp_path / "run")
    code, stdout, err = run_main(capsys, *TINY, "--total-timesteps", "2560", "--output-dir", out)
    assert code == 0, err
    lines = stdout.strip().splitlines()
    progress = [line for line in lines if line.startswith("[")]
    assert out in lines[0] and len(progress) == 10 and progress[-1].startswith("[100%]")
    summary = json.loads(lines[-1])
    assert summary["algo"] == "trpo" and summary["global_step"] == 2560
    ckpt = torch.load(tmp_path / "run" / "model.pt")
    assert ckpt["script"] == "trpo.py" and ckpt["env_id"] == "CartPole-v1"
    code, _, err = run_main(capsys, *TINY, "--total-timesteps", "256", "--output-dir", out)
    assert code != 0 and err.count("error:") == 1 and "--overwrite" in err
    code, stdout, err = run_main(capsys, "--eval-checkpoint", f"{out}/model.pt")
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["env_id"] == "CartPole-v1" and summary["eval_episodes"] == 10


def test_learns_cartpole(tmp_path):
    """Learning from a fixed seed, through the command line in a fresh process. A seed's exact
    trajectory differs across CPU types, so the bound is one that every seed measured meets
    with room to spare: with this command (24 iterations of 1024 steps), the best last-20
    mean return was 285 at worst over 17 seeds, tuning seeds 1-10 (341, 371, 447, 369, 454,
    285, 329, 365, 343, 366) and held-out seeds 1001-1007 (369, 290, 342, 460, 428, 329,
    455; the first 24,576 steps of their benchmark runs, which are the same, as nothing
    depends on the budget); measured 2026-11-22 (Intel). With --adv-norm-floor 1 (issue 31),
    on the AMD machine, 2026-12-07, tuning seeds 1-12: 345, 395, 447, 427, 462, 264, 329,
    365, 343, 330, 463, 360, worst 264 (the floor never acted before 24,576 steps: the same
    values as without it). A random policy scores about 22; the test asks for 150."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "trpo.py"), "--no-cuda", "--seed", "1",
         "--total-timesteps", "24576", "--eval-episodes", "5", "--output-dir", "out"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    returns = np.loadtxt(tmp_path / "out" / "episodes.csv", delimiter=",", skiprows=1)[:, 1]
    assert np.convolve(returns, np.ones(20) / 20, "valid").max() >= 150
    assert summary["global_step"] == 24_576 and summary["eval_mean_return"] > 0
    assert (tmp_path / "out" / "model.pt").exists()


def test_adv_norm_floor_shrinks_the_trust_region(monkeypatch, tmp_path):
    """--adv-norm-floor F: each TRPO step gets δ' = δ · min(1, std Â / F)², so its length
    (β ∝ √δ') shrinks in proportion to std Â once that is below F, as PPO's step does with
    Â / max(std Â, F); F = 0 keeps δ. Checked against std Â of the batch actually used."""
    seen = []
    real_valid, real_step = trpo.valid_transitions, trpo.trpo_step

    def recording_valid(b, adv):
        t = real_valid(b, adv)
        seen.append([t["adv"].std().item()])
        return t

    def recording_step(params, policy, log_prob, kl, obs, action, adv, args):
        seen[-1].append(args.max_kl)
        return real_step(params, policy, log_prob, kl, obs, action, adv, args)

    monkeypatch.setattr(trpo, "valid_transitions", recording_valid)
    monkeypatch.setattr(trpo, "trpo_step", recording_step)
    for floor in (0.0, 1.0, 100.0):
        seen.clear()
        args = trpo.Args(total_timesteps=2048, num_steps=64, cuda=False, adv_norm_floor=floor,
                         eval_episodes=0, output_dir=str(tmp_path / f"f{floor}"))  # fmt: skip
        trpo.train(args)
        assert len(seen) == 4
        for std, max_kl in seen:
            scale = 1.0 if floor == 0 else min(1.0, std / floor)
            assert max_kl == pytest.approx(0.01 * scale**2, rel=1e-6)
        if floor == 100.0:  # early CartPole: std Â of a few units, so the floor acts
            assert all(max_kl < 0.01 for _, max_kl in seen)
    assert trpo.Args().adv_norm_floor == 1.0
