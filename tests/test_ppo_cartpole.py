"""ppo_cartpole.py checked against independent computations: hand-derived values and
gradients, naive loops, closed forms, and a replayed environment."""

import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_cartpole as ppo

ROOT = Path(__file__).resolve().parents[1]


def naive_gae(rewards, values, terminated, dones, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l}, summed explicitly up to the end of t's episode (or of the
    rollout), with δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t)."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        delta = [
            rewards[t, n] + gamma * values[t + 1, n] * (1 - terminated[t, n]) - values[t, n]
            for t in range(T)
        ]
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += (gamma * lam) ** (k - t) * delta[k]
                if dones[k, n] or k == T - 1:
                    break
                k += 1
            adv[t, n] = total
    return adv


def as_tensors(*arrays):
    return [torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in arrays]


# ---------------------------------------------------------------- GAE


def test_gae_lambda_one_is_monte_carlo_return_minus_value():
    gamma = 0.9
    r = np.array([[1.0], [2.0], [3.0], [4.0]])
    v = np.array([[0.5], [0.1], [-0.3], [0.7], [9.0]])  # v[4]: after the terminal step
    term = np.array([[0], [0], [0], [1]])
    adv = ppo.gae(*as_tensors(r, v, term, term), gamma, 1.0).numpy()
    mc = [1 + 0.9 * 2 + 0.81 * 3 + 0.729 * 4, 2 + 0.9 * 3 + 0.81 * 4, 3 + 0.9 * 4, 4]
    np.testing.assert_allclose(adv[:, 0], np.array(mc) - v[:4, 0], rtol=1e-12)


def test_gae_lambda_zero_is_td_error():
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(6, 3)), rng.normal(size=(7, 3))
    term = rng.random((6, 3)) < 0.3
    trunc = rng.random((6, 3)) < 0.2
    adv = ppo.gae(*as_tensors(r, v, term, term | trunc), 0.95, 0.0).numpy()
    np.testing.assert_allclose(adv, r + 0.95 * v[1:] * (1 - term) - v[:-1], rtol=1e-12)


def test_gae_resets_at_episode_end_and_bootstraps_at_truncation():
    gamma, lam = 0.9, 0.8
    r = np.array([[1.0], [1.0], [0.0], [1.0]])
    v = np.array([[0.2], [0.3], [5.0], [0.4], [0.6]])
    # Step 1 is truncated: v[2] = 5 is V(final observation), and row 2 is the reset step.
    trunc = np.array([[0], [1], [0], [0]])
    zero = np.zeros_like(trunc)
    adv = ppo.gae(*as_tensors(r, v, zero, trunc), gamma, lam).numpy()[:, 0]
    d1 = 1.0 + gamma * 5.0 - 0.3  # bootstraps with V(final obs), not 0
    d0 = 1.0 + gamma * 0.3 - 0.2
    assert adv[1] == pytest.approx(d1)
    assert adv[0] == pytest.approx(d0 + gamma * lam * d1)
    # Nothing of the next episode leaks back across the boundary.
    d3 = 1.0 + gamma * 0.6 - 0.4
    assert adv[3] == pytest.approx(d3)
    # The same step terminated instead: no bootstrap.
    adv_t = ppo.gae(*as_tensors(r, v, trunc, trunc), gamma, lam).numpy()[:, 0]
    assert adv_t[1] == pytest.approx(1.0 - 0.3)


def test_gae_matches_naive_loop_on_random_data():
    rng = np.random.default_rng(1)
    T, N = 40, 5
    r, v = rng.normal(size=(T, N)), rng.normal(size=(T + 1, N))
    term = rng.random((T, N)) < 0.1
    trunc = (rng.random((T, N)) < 0.1) & ~term
    done = term | trunc
    adv = ppo.gae(*as_tensors(r, v, term, done), 0.97, 0.9).numpy()
    np.testing.assert_allclose(adv, naive_gae(r, v, term, done, 0.97, 0.9), rtol=1e-10)


# ---------------------------------------------------------------- autoreset and truncation


def test_rollout_masks_reset_steps_and_keeps_final_observation():
    """Replays the same seeded environment step by step, independently of rollout(), to
    check that (1) the step after every episode end is marked invalid (it is the autoreset
    step, not a transition), (2) every real transition is valid, (3) at a truncation the next
    buffer row is the true final observation, and value[t+1] = V(final obs) is what GAE uses,
    and (4) the stored log π_θold is that of the action taken in that state."""
    torch.manual_seed(0)
    max_steps = 7  # truncates often; a random policy also terminates sometimes
    envs = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=max_steps)
    agent = ppo.Agent(4, 2)
    obs, _ = envs.reset(seed=3)
    b, _, _ = ppo.rollout(agent, envs, obs, np.zeros(4, bool), 30, torch.device("cpu"))

    replay = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=max_steps)
    o, _ = replay.reset(seed=3)
    prev_done = np.zeros(4, bool)
    saw_trunc = saw_reset = False
    for t in range(30):
        np.testing.assert_array_equal(b["obs"][t].numpy(), o)
        np.testing.assert_array_equal(b["valid"][t].numpy(), ~prev_done)
        with torch.no_grad():  # log π_θold(a_t|s_t) of the action actually taken
            logpi = torch.log_softmax(agent.actor(torch.as_tensor(o)), -1)
        expected = logpi[torch.arange(4), b["action"][t]]
        np.testing.assert_allclose(b["logp"][t].numpy(), expected.numpy(), atol=1e-6)
        o, rew, term, trunc, _ = replay.step(b["action"][t].numpy())
        np.testing.assert_array_equal(rew[prev_done], 0.0)  # reset steps pay nothing
        np.testing.assert_array_equal(b["terminated"][t].numpy(), term)
        for n in np.flatnonzero(trunc & ~term):
            saw_trunc = True
            np.testing.assert_array_equal(b["obs"][t + 1, n].numpy(), o[n])
            with torch.no_grad():
                expected = agent.value(torch.as_tensor(o[n]))
            assert b["value"][t + 1, n].item() == pytest.approx(expected.item(), abs=1e-6)
        saw_reset |= prev_done.any()
        prev_done = term | trunc
    assert saw_trunc and saw_reset


def test_training_batch_excludes_reset_steps(monkeypatch, tmp_path):
    """Whatever the agent is trained on, no row is a reset step: count the rows that reach
    Agent.evaluate against the valid rows counted in an independent replay."""
    sizes, valid_counts = [], []
    real_evaluate, real_rollout = ppo.Agent.evaluate, ppo.rollout

    def counting_rollout(*a, **k):
        b, obs, prev_done = real_rollout(*a, **k)
        valid_counts.append(int(b["valid"].sum()))
        assert (b["reward"][~b["valid"]] == 0).all()
        return b, obs, prev_done

    def recording_evaluate(self, obs, action):
        if torch.is_grad_enabled():  # a training forward, not the rollout's no-grad pass
            sizes.append(len(obs))
        return real_evaluate(self, obs, action)

    monkeypatch.setattr(ppo, "rollout", counting_rollout)
    monkeypatch.setattr(ppo.Agent, "evaluate", recording_evaluate)
    args = ppo.Args(total_timesteps=2048, update_epochs=1, cuda=False, output_dir=str(tmp_path))
    ppo.train(args)
    assert sizes == valid_counts and min(valid_counts) < 8 * 64  # some steps were resets


# ---------------------------------------------------------------- losses


def test_clipped_surrogate_value_and_gradient_match_hand_derivation():
    eps = 0.2
    ratios = np.array([0.5, 0.9, 1.0, 1.1, 1.5, 0.5, 0.9, 1.0, 1.1, 1.5])
    adv = np.array([1.0, 1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, -2.0])
    logp_old = np.log(np.full(10, 0.4))
    logp = torch.tensor(logp_old + np.log(ratios), requires_grad=True)
    loss, clipfrac = ppo.clipped_surrogate_loss(
        logp, torch.tensor(logp_old), torch.tensor(adv), eps
    )
    loss.backward()
    n = len(ratios)
    expected, expected_grad = 0.0, np.zeros(n)
    for i, (r, a) in enumerate(zip(ratios, adv, strict=True)):
        clipped = min(max(r, 1 - eps), 1 + eps)
        expected -= min(r * a, clipped * a) / n
        # d(−r A / n)/d log π = −r A / n, unless the clipped branch is the smaller one, which
        # happens when r moved past 1 ± ε in the direction A favours: then no gradient.
        pushed_past = (a > 0 and r > 1 + eps) or (a < 0 and r < 1 - eps)
        expected_grad[i] = 0.0 if pushed_past else -r * a / n
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    np.testing.assert_allclose(logp.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-15)
    assert logp.grad[4].item() == 0.0 and logp.grad[5].item() == 0.0  # exactly zero
    assert clipfrac.item() == pytest.approx(4 / 10)


def test_advantage_normalisation_floor():
    """--adv-norm-floor F: Â ← (Â − mean) / max(std, F). One epoch on one minibatch from the
    same network: with std Â below F the step equals the step on the merely centred Â / F
    (norm off), so critic noise is not scaled up; above F it is the usual normalised step
    (F = 0). Checked against parameters stepped by hand-prepared advantages (SGD, no
    gradient clipping, so the actor's step is linear in Â)."""
    torch.manual_seed(0)
    n = 64
    obs, action = torch.randn(n, 4), torch.randint(0, 2, (n,))
    base = ppo.Agent(4, 2)
    with torch.no_grad():
        logp, _, value = base.evaluate(obs, action)

    def step(adv, **kw):
        agent = ppo.Agent(4, 2)
        agent.load_state_dict(base.state_dict())
        args = ppo.Args(update_epochs=1, num_minibatches=1, target_kl=0.0, max_grad_norm=1e9, **kw)
        t = dict(obs=obs, action=action, logp=logp, adv=adv, ret=value + 1.0, value=value)
        opt = torch.optim.SGD(agent.parameters(), lr=0.1)
        ppo.ppo_epochs(agent, opt, t, args, 1.0, ppo.categorical_entropy)
        return torch.cat([q.detach().flatten() for q in agent.actor.parameters()])

    for scale, floor in ((0.01, 1.0), (0.3, 0.5), (5.0, 1.0)):
        adv = scale * torch.randn(n) + 3.0
        centred, std = adv - adv.mean(), adv.std()
        by_hand = step(centred / max(std.item(), floor), norm_adv=False)
        torch.testing.assert_close(step(adv, adv_norm_floor=floor), by_hand)
        plain = step(adv, adv_norm_floor=0.0)  # the usual normalisation
        if std > floor:
            torch.testing.assert_close(plain, by_hand)
        else:  # the actor's step is linear in Â: without the floor it is F / std times longer
            theta0 = torch.cat([q.detach().flatten() for q in base.actor.parameters()])
            ratio = floor / std.item()
            torch.testing.assert_close(plain - theta0, (by_hand - theta0) * ratio)
    assert ppo.Args().norm_adv and ppo.Args().adv_norm_floor == 1.0  # the defaults


def test_value_loss_clipping_by_hand():
    eps, v_old, target = 0.2, torch.tensor([0.0]), torch.tensor([1.0])
    for v, loss, grad in [
        (2.0, 0.5 * 1.0, 1.0),  # overshoot: unclipped term is larger, gradient flows
        (-1.0, 0.5 * 4.0, -2.0),  # moved away from the target: still penalised fully
        (0.5, 0.5 * 0.64, 0.0),  # moved toward target beyond ε: clipped, no gradient
        (0.1, 0.5 * 0.81, -0.9),  # inside the clip range: plain regression
    ]:
        vt = torch.tensor([v], requires_grad=True)
        out = ppo.value_loss(vt, v_old, target, eps)
        out.backward()
        assert out.item() == pytest.approx(loss) and vt.grad.item() == pytest.approx(grad)
    vt = torch.tensor([0.5], requires_grad=True)
    assert ppo.value_loss(vt, v_old, target, 0.0).item() == pytest.approx(0.125)


def test_entropy_closed_forms_and_sign_of_bonus():
    assert ppo.categorical_entropy(torch.zeros(3, 4)).item() == pytest.approx(np.log(4))
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    p = np.exp([2.0, -1.0, 0.5]) / np.exp([2.0, -1.0, 0.5]).sum()
    assert ppo.categorical_entropy(logits).item() == pytest.approx(-(p * np.log(p)).sum())
    # The total loss carries −c2·S: one gradient step on it must raise the entropy.
    logits.requires_grad_(True)
    (-0.1 * ppo.categorical_entropy(logits)).backward()
    with torch.no_grad():
        assert ppo.categorical_entropy(logits - logits.grad) > ppo.categorical_entropy(logits)


def test_k3_kl_is_unbiased_and_non_negative():
    torch.manual_seed(0)
    p_old = torch.tensor([0.5, 0.3, 0.2])
    p_new = torch.tensor([0.3, 0.3, 0.4])
    exact = (p_old * (p_old / p_new).log()).sum().item()
    a = torch.multinomial(p_old, 200_000, replacement=True)
    log_r = p_new.log()[a] - p_old.log()[a]
    k3 = (log_r.exp() - 1) - log_r
    assert (k3 >= 0).all()
    est = ppo.approx_kl(p_new.log()[a], p_old.log()[a]).item()
    assert est == pytest.approx(exact, abs=4 * k3.std().item() / np.sqrt(len(a)))


def test_kl_penalty_gradient_is_ratio_advantage_plus_beta_kl_gradient():
    """∂/∂log π_i of −mean(r Â) + β·mean(k3) is (−r_i Â_i + β (r_i − 1)) / n."""
    logp_old = torch.log(torch.tensor([0.5, 0.2, 0.7], dtype=torch.float64))
    r = torch.tensor([1.3, 0.8, 1.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    logp = (logp_old + r.log()).requires_grad_(True)
    ppo.kl_penalty_loss(logp, logp_old, adv, beta=3.0).backward()
    np.testing.assert_allclose(logp.grad.numpy(), ((-r * adv + 3.0 * (r - 1)) / 3).numpy(), 1e-12)


def test_adaptive_beta_rule():
    assert ppo.adapt_kl_beta(1.0, 0.02, 0.01) == 2.0  # d > 1.5 d_targ: double
    assert ppo.adapt_kl_beta(1.0, 0.005, 0.01) == 0.5  # d < d_targ / 1.5: halve
    assert ppo.adapt_kl_beta(1.0, 0.012, 0.01) == 1.0  # in between: keep
    assert ppo.adapt_kl_beta(1.0, 0.0149, 0.01) == 1.0
    assert ppo.adapt_kl_beta(1.0, 0.0067, 0.01) == 1.0


def test_orthogonal_init():
    agent = ppo.Agent(4, 2, hidden=64)
    w = agent.actor[0].weight.detach()  # 64x4: orthonormal columns, gain √2
    np.testing.assert_allclose((w.T @ w).numpy(), 2 * np.eye(4), atol=1e-5)
    head = agent.actor[4].weight.detach()
    np.testing.assert_allclose((head @ head.T).numpy(), 1e-4 * np.eye(2), atol=1e-9)


# ---------------------------------------------------------------- end to end


def run_main(capsys, *flags):
    """The script's command line, in this process: (exit status, stdout, stderr)."""
    try:
        ppo.main(["--no-cuda", *flags])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        print(e.code, file=sys.stderr)  # what the interpreter would print for sys.exit(str)
    out, err = capsys.readouterr()
    return code, out, err


def test_determinism(tmp_path):
    out = []
    for name in ("a", "b"):
        args = ppo.Args(total_timesteps=1024, cuda=False, output_dir=str(tmp_path / name))
        ppo.train(args)
        out.append(torch.load(tmp_path / name / "model.pt")["agent"])
    for key in out[0]:
        assert torch.equal(out[0][key], out[1][key]), key
    assert (tmp_path / "a/episodes.csv").read_text() == (tmp_path / "b/episodes.csv").read_text()


def test_penalty_variant_runs_end_to_end(tmp_path):
    args = ppo.Args(
        total_timesteps=2048, loss_type="kl_penalty", cuda=False, output_dir=str(tmp_path)
    )
    summary = ppo.train(args)
    assert summary["algo"] == "ppo_kl_penalty" and summary["global_step"] == 2048


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--num-envs", "0"], "--num-envs"),
        (["--num-minibatches", "3"], "--num-minibatches"),
        (["--env-id", "Pendulum-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
        (["--loss-type", "foo"], "--loss-type"),
        (["--gamma", "nan"], "--gamma"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_bad_input_one_line_error(flags, named, tmp_path, capsys):
    """Bad input: a non-zero exit and one `error:` line that names the flag at fault."""
    code, _, err = run_main(capsys, *flags, "--output-dir", str(tmp_path))
    assert code != 0
    assert err.strip().count("\n") == 0 and err.startswith("error:") and named in err


def test_non_finite_loss_stops_and_names_the_flag(tmp_path, capsys):
    """A loss that turns non-finite stops the run, names the flag to lower, and saves nothing
    non-finite: in its first iteration nothing at all, later the last finite weights."""
    code, _, err = run_main(
        capsys, "--learning-rate", "1e30", "--output-dir", str(tmp_path / "out"),
        "--total-timesteps", "2048",
    )  # fmt: skip
    assert code == 1 and "non-finite loss at iteration 1" in err and "--learning-rate" in err
    assert not (tmp_path / "out" / "model.pt").exists()


def test_output_dir_with_a_run_is_refused_without_overwrite(tmp_path, capsys):
    flags = ["--total-timesteps", "256", "--eval-episodes", "0", "--output-dir", str(tmp_path)]
    assert run_main(capsys, *flags)[0] == 0
    before = (tmp_path / "model.pt").read_bytes()
    code, _, err = run_main(capsys, *flags)
    assert code != 0 and err.count("\n") == 1 and "--overwrite" in err
    assert (tmp_path / "model.pt").read_bytes() == before
    assert run_main(capsys, *flags, "--overwrite", "--seed", "2")[0] == 0
    assert (tmp_path / "model.pt").read_bytes() != before


def test_progress_line_every_tenth_and_rounded_summary(tmp_path, capsys):
    """About ten progress lines with percent, step, return, elapsed and ETA, the last at 100%;
    the output folder named first; a short JSON summary with rounded floats."""
    code, out, _ = run_main(capsys, "--total-timesteps", "5120", "--output-dir", str(tmp_path))
    lines = out.strip().splitlines()
    assert code == 0 and str(tmp_path) in lines[0]
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 10 and progress[-1].startswith("[100%] step 5120")
    assert all(k in progress[0] for k in ("step", "return", "elapsed", "ETA"))
    summary = json.loads(lines[-1])
    assert len(lines[-1]) < 400 and summary["eval_mean_return"] > 0
    assert all(round(v, 3) == v for v in summary.values() if isinstance(v, float))


def test_eval_checkpoint_alone_uses_the_saved_env_and_ten_episodes(tmp_path, capsys):
    run_main(
        capsys, "--total-timesteps", "512", "--eval-episodes", "0", "--output-dir", str(tmp_path)
    )
    code, out, err = run_main(capsys, "--eval-checkpoint", str(tmp_path / "model.pt"))
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0, err
    assert summary["eval_episodes"] == 10 and summary["env_id"] == "CartPole-v1"


def test_help_shows_the_usage_examples(capsys):
    with pytest.raises(SystemExit):
        ppo.main(["--help"])
    out = capsys.readouterr().out
    assert "python ppo_cartpole.py --loss-type kl_penalty" in out and "(default: )" not in out


def test_learns_cartpole(tmp_path):
    """Learning with the default Args, through the command line in a fresh process. A seed's
    exact trajectory differs across CPU types, so the bound is one that every seed measured
    meets with room to spare: with this very command (20k steps, so the learning rate anneals
    over 20k) and the defaults of issue 31 (--adv-norm-floor 1), the best last-20 mean return
    was 163.2 at worst over tuning seeds 1-12 (349, 172, 163, 201, 182, 283, 281, 210, 283,
    297, 253, 298; AMD EPYC, 2026-12-07). A random policy scores about 22; the test asks for
    60."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "ppo_cartpole.py"), "--no-cuda", "--seed", "1",
         "--total-timesteps", "20000", "--eval-episodes", "5", "--output-dir", "out"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    returns = np.loadtxt(tmp_path / "out" / "episodes.csv", delimiter=",", skiprows=1)[:, 1]
    assert np.convolve(returns, np.ones(20) / 20, "valid").max() >= 60
    assert summary["global_step"] == 19_968 and summary["eval_mean_return"] > 0
    assert (tmp_path / "out" / "model.pt").exists()
