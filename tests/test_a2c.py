"""a2c.py checked against independent computations (naive loops, hand-derived values and
gradients, a replayed environment), and against ppo_cartpole.py: one PPO epoch on one full
minibatch, without advantage normalisation and with A2C's optimizer, IS the A2C update."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import a2c
import ppo_cartpole as ppo

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_torch_thread():
    """As the script runs (seed_and_device): tiny tensors are slower on several threads, and
    much slower when the machine's cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def as_tensors(*arrays):
    return [torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in arrays]


def naive_n_step_advantage(rewards, values, terminated, dones, gamma):
    """The paper's n-step advantage, by explicit sums: from step t to the end of t's episode
    or of the rollout, whichever comes first (step k),
        Â_t = Σ_{j=t..k} γ^{j−t} r_j + γ^{k+1−t} V(s_{k+1}) [not terminated_k] − V(s_t)."""
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            total, k = 0.0, t
            while True:
                total += gamma ** (k - t) * rewards[k, n]
                if dones[k, n] or k == T - 1:
                    break
                k += 1
            if not terminated[k, n]:  # truncated or cut by the rollout's end: bootstrap
                total += gamma ** (k + 1 - t) * values[k + 1, n]
            adv[t, n] = total - values[t, n]
    return adv


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


def random_rollout(rng, T=12, N=4):
    r, v = rng.normal(size=(T, N)), rng.normal(size=(T + 1, N))
    term = rng.random((T, N)) < 0.15
    trunc = (rng.random((T, N)) < 0.15) & ~term
    both = rng.random((T, N)) < 0.05  # a step can be terminated AND truncated: terminal
    return r, v, term | both, term | trunc | both


# ---------------------------------------------------------------- advantages


def test_lambda_one_is_the_papers_n_step_advantage():
    rng = np.random.default_rng(0)
    for _ in range(5):
        r, v, term, done = random_rollout(rng)
        adv = a2c.gae(*as_tensors(r, v, term, done), 0.97, 1.0).numpy()
        np.testing.assert_allclose(adv, naive_n_step_advantage(r, v, term, done, 0.97), 1e-10)


def test_gae_matches_naive_loop_on_random_data():
    rng = np.random.default_rng(1)
    r, v, term, done = random_rollout(rng, T=40, N=5)
    adv = a2c.gae(*as_tensors(r, v, term, done), 0.97, 0.9).numpy()
    np.testing.assert_allclose(adv, naive_gae(r, v, term, done, 0.97, 0.9), rtol=1e-10)


def test_truncation_bootstraps_and_termination_does_not():
    gamma = 0.9
    r = np.array([[1.0], [1.0], [0.0], [1.0], [1.0]])
    v = np.array([[0.2], [0.3], [5.0], [0.4], [0.6], [0.7]])
    # Step 1 ends its episode; v[2] = 5 is V(final observation); row 2 is the reset step.
    end = np.array([[0], [1], [0], [0], [0]])
    zero = np.zeros_like(end)
    trunc_adv = a2c.gae(*as_tensors(r, v, zero, end), gamma, 1.0).numpy()[:, 0]
    assert trunc_adv[0] == pytest.approx(1 + gamma * 1 + gamma**2 * 5.0 - 0.2)
    assert trunc_adv[1] == pytest.approx(1 + gamma * 5.0 - 0.3)
    # The next episode's return is cut at the rollout's end and bootstrapped with v[5].
    assert trunc_adv[3] == pytest.approx(1 + gamma * 1 + gamma**2 * 0.7 - 0.4)
    term_adv = a2c.gae(*as_tensors(r, v, end, end), gamma, 1.0).numpy()[:, 0]
    assert term_adv[0] == pytest.approx(1 + gamma * 1 - 0.2)  # terminal: no V(final obs)


# ---------------------------------------------------------------- the loss


def test_a2c_loss_value_and_gradients_match_hand_derivation():
    rng = np.random.default_rng(2)
    n, c1, c2 = 6, 0.7, 0.05
    z = rng.normal(size=(n, 3))
    action = rng.integers(0, 3, n)
    values, adv, ret = rng.normal(size=n), rng.normal(size=n), rng.normal(size=n)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    H = -(p * np.log(p)).sum(1)

    logits = torch.tensor(z, requires_grad=True)
    v = torch.tensor(values, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[torch.arange(n), torch.tensor(action)]
    loss, pg, vl, ent = a2c.a2c_loss(logp, logits, v, torch.tensor(adv), torch.tensor(ret), c1, c2)
    loss.backward()

    logp_np = np.log(p[np.arange(n), action])
    expected = -(logp_np * adv).mean() + c1 * 0.5 * ((values - ret) ** 2).mean() - c2 * H.mean()
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    assert pg.item() == pytest.approx(-(logp_np * adv).mean(), rel=1e-12)
    assert ent.item() == pytest.approx(H.mean(), rel=1e-12)
    # ∂L/∂V_i = c1 (V_i − V_i^targ) / n
    np.testing.assert_allclose(v.grad.numpy(), c1 * (values - ret) / n, rtol=1e-12)
    # ∂L/∂z_ij = −Â_i (1[j = a_i] − p_ij) / n  (policy term: ∂log p_a/∂z_j = 1[j=a] − p_j)
    #          + c2 p_ij (log p_ij + H_i) / n   (entropy term: ∂H/∂z_j = −p_j (log p_j + H))
    onehot = np.eye(3)[action]
    grad = -adv[:, None] * (onehot - p) / n + c2 * p * (np.log(p) + H[:, None]) / n
    np.testing.assert_allclose(logits.grad.numpy(), grad, rtol=1e-10, atol=1e-14)


def test_advantages_and_targets_are_constants():
    logp = torch.tensor([-0.5, -1.0], requires_grad=True)
    adv = torch.tensor([1.0, 2.0], requires_grad=True)
    ret = torch.tensor([0.0, 1.0], requires_grad=True)
    loss = a2c.a2c_loss(logp, torch.zeros(2, 2), torch.zeros(2), adv, ret, 1.0, 0.0)[0]
    loss.backward()
    assert adv.grad is None and ret.grad is None


def test_rmsprop_step_matches_the_update_rule_by_hand():
    """The default optimizer is the paper's and SB3's RMSprop, α = 0.99, ε = 1e-5:
    v ← α v + (1 − α) g², θ ← θ − lr g / (√v + ε); checked over two steps at the default lr."""
    args = a2c.Args()
    lr = args.learning_rate
    theta = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64, requires_grad=True)
    opt = a2c.make_optimizer([theta], args)
    assert isinstance(opt, torch.optim.RMSprop) and (args.rms_alpha, args.optimizer_eps) == (
        0.99,
        1e-5,
    )
    th, v = theta.detach().numpy().copy(), np.zeros(3)
    for g in ([0.3, -1.0, 2e-5], [-0.1, 0.4, 1.0]):
        theta.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        v = 0.99 * v + 0.01 * np.square(g)
        th = th - lr * np.array(g) / (np.sqrt(v) + 1e-5)
        np.testing.assert_allclose(theta.detach().numpy(), th, rtol=1e-12)
    adam = a2c.make_optimizer([theta], dataclass_replace(args, optimizer="adam"))
    assert isinstance(adam, torch.optim.Adam)


def dataclass_replace(args, **changes):
    return dataclasses.replace(args, **changes)


# ---------------------------------------------------------------- autoreset and truncation


def test_rollout_masks_reset_steps_and_keeps_final_observation():
    """Replays the same seeded environment step by step, independently of rollout(): the
    step after every episode end is invalid (the autoreset step), every real transition is
    valid, and at a truncation the next row is the true final observation whose V is the
    bootstrap value."""
    torch.manual_seed(0)
    max_steps = 7  # truncates often; a random policy also terminates sometimes
    envs = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=max_steps)
    agent = a2c.Agent(4, 2)
    obs, _ = envs.reset(seed=3)
    b, _, _ = a2c.rollout(agent, envs, obs, np.zeros(4, bool), 30, torch.device("cpu"))

    replay = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=max_steps)
    o, _ = replay.reset(seed=3)
    prev_done = np.zeros(4, bool)
    saw_trunc = saw_reset = False
    for t in range(30):
        np.testing.assert_array_equal(b["obs"][t].numpy(), o)
        np.testing.assert_array_equal(b["valid"][t].numpy(), ~prev_done)
        o, rew, term, trunc, _ = replay.step(b["action"][t].numpy())
        np.testing.assert_array_equal(rew[prev_done], 0.0)  # reset steps pay nothing
        np.testing.assert_array_equal(b["terminated"][t].numpy(), term)
        np.testing.assert_array_equal(b["done"][t].numpy(), term | trunc)
        for n in np.flatnonzero(trunc & ~term):
            saw_trunc = True
            np.testing.assert_array_equal(b["obs"][t + 1, n].numpy(), o[n])
            with torch.no_grad():
                expected = agent.value(torch.as_tensor(o[n]))
            assert b["value"][t + 1, n].item() == pytest.approx(expected.item(), abs=1e-6)
        saw_reset |= prev_done.any()
        prev_done = term | trunc
    assert saw_trunc and saw_reset


@pytest.mark.parametrize("norm_adv", [False, True])
def test_update_trains_on_real_transitions_with_bootstrapped_targets(monkeypatch, norm_adv):
    """What a2c_update feeds the loss: exactly the valid rows, with V^targ = the n-step
    return of the naive loop (bootstrapped at truncations and at the rollout's end), and Â
    normalised over those rows (mean 0, std 1) with --norm-adv."""
    torch.manual_seed(1)
    envs = gym.make_vec("CartPole-v1", 4, "vector_entry_point", max_episode_steps=7)
    agent = a2c.Agent(4, 2)
    obs, _ = envs.reset(seed=5)
    b, _, _ = a2c.rollout(agent, envs, obs, np.zeros(4, bool), 20, torch.device("cpu"))
    seen = {}

    def recording_loss(logp, logits, values, adv, returns, vf_coef, ent_coef):
        seen.update(n=len(logp), adv=adv.detach().numpy(), ret=returns.detach().numpy())
        return real_loss(logp, logits, values, adv, returns, vf_coef, ent_coef)

    real_loss = a2c.a2c_loss
    monkeypatch.setattr(a2c, "a2c_loss", recording_loss)
    args = a2c.Args(gamma=0.9, gae_lambda=1.0, norm_adv=norm_adv)
    # train()'s pipeline: GAE, the valid transitions, one update.
    adv = a2c.gae(b["reward"], b["value"], b["terminated"], b["done"], 0.9, 1.0)
    t = a2c.valid_transitions(b, adv)
    a2c.a2c_update(agent, a2c.make_optimizer(agent.parameters(), args), t, args)

    np64 = [b[k].double().numpy() for k in ("reward", "value", "terminated", "done")]
    valid = b["valid"].numpy()
    expected_adv = naive_n_step_advantage(*np64, 0.9)
    assert 0 < seen["n"] == valid.sum() < valid.size  # some rows were reset steps
    expected = expected_adv[valid]
    if norm_adv:
        expected = (expected - expected.mean()) / (expected.std(ddof=1) + 1e-8)
    np.testing.assert_allclose(seen["adv"], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        seen["ret"], (expected_adv + np64[1][:-1])[valid], rtol=1e-5, atol=1e-5
    )


# ---------------------------------------------------------------- A2C is PPO with one epoch


@pytest.mark.parametrize("optimizer,norm_adv", [("rmsprop", False), ("adam", False),
                                                ("rmsprop", True)])  # fmt: skip
def test_ppo_with_one_epoch_is_a2c_update_by_update(optimizer, norm_adv):
    """Same seed, same initial network, same rollouts: ppo_cartpole.ppo_epochs with one
    epoch, one minibatch (the whole rollout) and no advantage normalisation gives A2C's
    parameters, after each of 10 consecutive updates. The gradients agree because
    ∇(r Â) = r Â ∇log π and r = 1 on the first pass, so ∇L^CLIP = ∇(log π Â). The paper has
    no advantage normalisation; with it on both sides (per minibatch = per rollout) the
    identity holds too."""
    args = a2c.Args(
        optimizer=optimizer, norm_adv=norm_adv, gae_lambda=0.95, ent_coef=0.01, vf_coef=0.5
    )
    ppo_args = ppo.Args(
        update_epochs=1, num_minibatches=1, norm_adv=norm_adv, loss_type="clip", target_kl=0.0,
        vf_coef=args.vf_coef, ent_coef=args.ent_coef, max_grad_norm=args.max_grad_norm,
    )  # fmt: skip
    torch.manual_seed(0)
    agent_a2c = a2c.Agent(4, 2)
    agent_ppo = ppo.Agent(4, 2)
    agent_ppo.load_state_dict(agent_a2c.state_dict())
    opt_a2c = a2c.make_optimizer(agent_a2c.parameters(), args)
    opt_ppo = a2c.make_optimizer(agent_ppo.parameters(), args)
    envs = gym.make_vec("CartPole-v1", 8, "vector_entry_point")
    obs, _ = envs.reset(seed=0)
    prev_done = np.zeros(8, bool)
    moved = 0.0
    for _ in range(10):
        b, obs, prev_done = a2c.rollout(agent_a2c, envs, obs, prev_done, 16, torch.device("cpu"))
        before = torch.cat([p.detach().flatten() for p in agent_a2c.parameters()])
        adv = a2c.gae(b["reward"], b["value"], b["terminated"], b["done"], args.gamma, 0.95)
        a2c.a2c_update(agent_a2c, opt_a2c, a2c.valid_transitions(b, adv), args)
        # PPO's side from PPO's own functions, on the same rollout.
        adv = ppo.gae(b["reward"], b["value"], b["terminated"], b["done"], args.gamma, 0.95)
        stats = ppo.ppo_epochs(
            agent_ppo,
            opt_ppo,
            ppo.valid_transitions(b, adv),
            ppo_args,
            1.0,
            ppo.categorical_entropy,
        )
        assert stats["clipfrac"] == 0  # the first pass over a rollout: r = 1 everywhere
        after = torch.cat([p.detach().flatten() for p in agent_a2c.parameters()])
        moved += (after - before).abs().max().item()
        for pa, pp in zip(agent_a2c.parameters(), agent_ppo.parameters(), strict=True):
            torch.testing.assert_close(pa, pp, rtol=1e-5, atol=1e-6)
    assert moved > 1e-3  # the updates did move the networks


def test_ppo_script_with_one_epoch_trains_exactly_like_a2c_script(monkeypatch, tmp_path):
    """The whole training loops: ppo_cartpole.train with update_epochs=1, num_minibatches=1,
    norm_adv off and A2C's RMSprop in place of its Adam ends with A2C's parameters and the
    same episodes. Two test-only patches: the optimizer, and an identity permutation (one
    minibatch, so the order only moves the float summation; and it keeps the random
    stream, which samples the actions, in step with a2c.py's)."""
    shared = dict(
        seed=3, cuda=False, total_timesteps=8 * 5 * 60, learning_rate=7e-4, anneal_lr=True,
        num_envs=8, num_steps=5, gamma=0.99, gae_lambda=1.0, ent_coef=0.01, vf_coef=0.5,
        max_grad_norm=0.5, norm_adv=False, eval_episodes=0,
    )  # fmt: skip
    a2c.train(a2c.Args(**shared, output_dir=str(tmp_path / "a2c")))
    a2c_args = a2c.Args(**shared)
    monkeypatch.setattr(
        torch.optim, "Adam", lambda params, **kw: a2c.make_optimizer(params, a2c_args)
    )
    monkeypatch.setattr(torch, "randperm", lambda n, device=None: torch.arange(n, device=device))
    ppo_args = ppo.Args(**shared, update_epochs=1, num_minibatches=1)
    ppo.train(dataclass_replace(ppo_args, output_dir=str(tmp_path / "ppo")))
    state_a2c = torch.load(tmp_path / "a2c" / "model.pt")["agent"]
    state_ppo = torch.load(tmp_path / "ppo" / "model.pt")["agent"]
    for key in state_a2c:
        torch.testing.assert_close(state_a2c[key], state_ppo[key], rtol=1e-5, atol=1e-6)
    episodes = [(tmp_path / d / "episodes.csv").read_text() for d in ("a2c", "ppo")]
    assert episodes[0] == episodes[1] and episodes[0].count("\n") > 5


# ---------------------------------------------------------------- end to end


def run_main(capsys, *flags):
    """The script's command line, in this process: (exit status, stdout, stderr)."""
    try:
        a2c.main(["--no-cuda", *flags])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        print(e.code, file=sys.stderr)  # what the interpreter would print for sys.exit(str)
    out, err = capsys.readouterr()
    return code, out, err


def test_determinism(tmp_path):
    out = []
    for name in ("a", "b"):
        args = a2c.Args(
            total_timesteps=2000, cuda=False, eval_episodes=0, output_dir=str(tmp_path / name)
        )
        a2c.train(args)
        out.append(torch.load(tmp_path / name / "model.pt")["agent"])
    for key in out[0]:
        assert torch.equal(out[0][key], out[1][key]), key
    assert (tmp_path / "a/episodes.csv").read_text() == (tmp_path / "b/episodes.csv").read_text()


def one_error_line(code, err, *names):
    """A non-zero exit and one `error:` line on stderr that names each of `names`."""
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error:"), err
    assert all(name in lines[0] for name in names), err


@pytest.mark.parametrize(
    "flags,named",
    [
        (["--num-envs", "0"], "--num-envs"),
        (["--num-steps", "-1"], "--num-steps"),
        (["--optimizer", "sgd"], "--optimizer"),
        (["--rms-alpha", "1"], "--rms-alpha"),
        (["--gae-lambda", "1.5"], "--gae-lambda"),
        (["--learning-rate", "nan"], "--learning-rate"),
        (["--env-id", "Pendulum-v1"], "--env-id"),
        (["--env-id", "NoSuchEnv-v0"], "--env-id"),
        (["--seed", "x"], "--seed"),
    ],
)
def test_bad_input_one_line_error(flags, named, tmp_path, capsys):
    code, _, err = run_main(capsys, *flags, "--output-dir", str(tmp_path))
    one_error_line(code, err, named)
    assert not (tmp_path / "model.pt").exists()


def test_output_dir_of_a_run_is_refused_without_overwrite(tmp_path, capsys):
    flags = ["--total-timesteps", "80", "--eval-episodes", "0", "--output-dir", str(tmp_path)]
    assert run_main(capsys, *flags)[0] == 0 and (tmp_path / "model.pt").exists()
    code, _, err = run_main(capsys, *flags)
    one_error_line(code, err, "--output-dir")
    assert run_main(capsys, *flags, "--overwrite")[0] == 0


@pytest.mark.parametrize("lr,iteration", [("1e30", 1), ("1e18", 2)])
def test_non_finite_loss_stops_and_keeps_the_last_good_state(lr, iteration, tmp_path, capsys):
    """A diverging step stops the run, naming the flag to lower. model.pt then holds the
    last finite weights, or, when the first iteration already diverges, does not exist."""
    code, _, err = run_main(
        capsys, "--learning-rate", lr, "--output-dir", str(tmp_path / "out"),
        "--total-timesteps", "400", "--eval-episodes", "0",
    )  # fmt: skip
    one_error_line(code, err, "--learning-rate", f"iteration {iteration}")
    if iteration == 1:
        assert not (tmp_path / "out" / "model.pt").exists()
        return
    saved = torch.load(tmp_path / "out" / "model.pt")
    assert (tmp_path / "out" / "episodes.csv").exists() and saved["args"]["seed"] == 1
    assert all(torch.isfinite(v).all() for v in saved["agent"].values())


def test_eval_checkpoint_alone_reproduces_the_training_evaluation(tmp_path, capsys):
    """`--eval-checkpoint X` alone: 10 episodes by default, the env id from the checkpoint."""
    flags = ["--total-timesteps", "4000", "--env-id", "Acrobot-v1"]
    code, out, _ = run_main(capsys, *flags, "--output-dir", str(tmp_path / "train"))
    trained = json.loads(out.strip().splitlines()[-1])
    ckpt = torch.load(tmp_path / "train" / "model.pt")
    assert {"agent", "script", "env_id", "args"} <= ckpt.keys() and ckpt["script"] == "a2c.py"
    code, out, err = run_main(capsys, "--eval-checkpoint", str(tmp_path / "train" / "model.pt"))
    assert code == 0, err
    evaluated = json.loads(out.strip().splitlines()[-1])
    assert evaluated["eval_episodes"] == 10 and evaluated["script"] == "a2c.py"
    assert evaluated["env_id"] == "Acrobot-v1"
    assert evaluated["eval_mean_return"] == trained["eval_mean_return"]


@pytest.mark.parametrize("problem", ["corrupt", "missing", "other_script", "misfit"])
def test_eval_checkpoint_errors(problem, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if problem == "corrupt":
        path.write_bytes(b"not a checkpoint")
    elif problem != "missing":
        script = "ppo_cartpole.py" if problem == "other_script" else "a2c.py"
        torch.save({"script": script, "env_id": "CartPole-v1", "agent": {}, "args": {}}, path)
    code, _, err = run_main(capsys, "--eval-checkpoint", str(path), "--eval-episodes", "2")
    one_error_line(code, err, "--eval-checkpoint", str(path))


def test_learns_to_solve_cartpole(tmp_path):
    """Short-run learning with the default Args, through the command line in a fresh
    process: the solved rule within 150k steps, and the JSON summary last. Measured on this
    machine (2026-11-22): the tuning seeds 1..12 solved at 33.0k-60.1k steps, the held-out
    seeds 1001..1020 at 30.6k-80.4k (worst: 1002). The final return is not bounded: one
    held-out seed (1005) collapsed after solving and was at 21 at 100k, 500 at 150k."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "a2c.py"), "--no-cuda", "--seed", "1",
         "--total-timesteps", "150000", "--eval-episodes", "5", "--output-dir", "out"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["algo"] == "a2c" and summary["global_step"] == 150_000
    assert summary["solved_at_step"] is not None and summary["solved_at_step"] <= 150_000
    assert summary["eval_mean_return"] is not None
    assert (tmp_path / "out" / "model.pt").exists()
