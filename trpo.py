"""Trust Region Policy Optimization (TRPO) with conjugate gradient on CartPole-v1, in one file.

Schulman et al. 2015, "Trust Region Policy Optimization", https://arxiv.org/abs/1502.05477:
a natural-gradient step, found by conjugate gradient on Fisher-vector products, scaled to the
edge of a KL trust region and checked by a backtracking line search. Advantages come from GAE
(Schulman et al. 2015, https://arxiv.org/abs/1506.02438); a separate critic regresses the returns.

    python trpo.py                       # solves CartPole-v1
    python trpo.py --max-kl 0.01 --seed 2
    python trpo.py --help
"""

import argparse
import csv
import dataclasses
import json
import math
import os
import random
import sys
import time
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.tensorboard import SummaryWriter


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the environments")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and checkpoints go here; default runs/<run-name>")
    env_id: str = flag("CartPole-v1", "a Gymnasium environment with a Discrete action space")
    total_timesteps: int = flag(150_000, "environment steps to train for")
    num_envs: int = flag(8, "parallel environments (numpy-vectorised where the env has it)")
    num_steps: int = flag(128, "steps per environment per iteration; batch = num_envs*num_steps")
    gamma: float = flag(0.99, "discount factor")
    gae_lambda: float = flag(0.98, "GAE lambda: 0 is one-step TD, 1 is Monte Carlo")
    max_kl: float = flag(0.01, "trust-region radius delta: the bound on the mean KL per update")
    cg_iters: int = flag(10, "maximum conjugate-gradient iterations for F s = g")
    cg_damping: float = flag(0.1, "damping added to the Fisher matrix: (F + damping*I) s = g")
    cg_tol: float = flag(1e-8, "conjugate gradient stops once |residual| <= cg_tol*|g|")
    line_search_steps: int = flag(10, "maximum backtracking steps (step halved each time)")
    learning_rate: float = flag(1e-3, "Adam learning rate of the critic")
    critic_epochs: int = flag(20, "passes of critic regression over each batch")
    critic_minibatch_size: int = flag(512, "minibatch size of the critic regression")
    hidden_size: int = flag(64, "width of the two hidden layers of the policy and the critic")
    eval_episodes: int = flag(0, "greedy evaluation episodes after training (0: none)")


def parse_args(argv=None) -> Args:
    """Build the command line from the fields of Args: --flag-name, --x/--no-x for booleans."""
    parser = argparse.ArgumentParser(description=sys.modules[__name__].__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        kind = type(f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=None if kind is bool else kind,
            action=argparse.BooleanOptionalAction if kind is bool else None,
            default=f.default,
            help=f.metadata["help"] + " (default: %(default)s)",
        )
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    return Args(**vars(parser.parse_args(argv)))


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def gae_advantages(rewards, values, terminated, dones, gamma, lam):
    """Generalized advantage estimation over a [T, N] rollout (Schulman et al. 2015, eq. 16).

        delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}

    `values` has T+1 rows: row T is V of the observation after the rollout. With next-step
    autoreset, s_{t+1} is row t+1 even when step t ended the episode (it is then the final
    observation), so truncation bootstraps V(final obs) and termination does not. done_t
    (terminated or truncated) cuts the recursion; the reset step after it is masked by the caller.
    """
    advantages = torch.zeros_like(rewards)
    next_advantage = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # delta_t = r_t + gamma (1 - terminated_t) V(s_{t+1}) - V(s_t)
        delta = rewards[t] + gamma * (1 - terminated[t]) * values[t + 1] - values[t]
        # A_t = delta_t + gamma lam (1 - done_t) A_{t+1}
        next_advantage = delta + gamma * lam * (1 - dones[t]) * next_advantage
        advantages[t] = next_advantage
    return advantages


def categorical_kl(logits_p, logits_q):
    """Per-state KL(p || q) = sum_a p(a) (log p(a) - log q(a)) of two categorical distributions."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    # KL(p || q) = sum_a p(a) (log p(a) - log q(a))
    return (logp.exp() * (logp - logq)).sum(-1)


def surrogate_advantage(logits, actions, logp_old, advantages):
    """The TRPO surrogate L(theta) = E[pi_theta(a|s) / pi_theta_old(a|s) * A] (TRPO eq. 14)."""
    logp = F.log_softmax(logits, -1).gather(-1, actions[:, None]).squeeze(-1)
    # L = mean( exp(log pi - log pi_old) * A )
    return (torch.exp(logp - logp_old) * advantages).mean()


def conjugate_gradient(matvec, b, iters, tol):
    """Solve A x = b for symmetric positive-definite A given only v -> A v (Hestenes-Stiefel).

        x_0 = 0, r_0 = p_0 = b
        alpha_k = r_k.r_k / p_k.A p_k,  x_{k+1} = x_k + alpha_k p_k,  r_{k+1} = r_k - alpha_k A p_k
        p_{k+1} = r_{k+1} + (r_{k+1}.r_{k+1} / r_k.r_k) p_k

    Stops after `iters` iterations or once |r_k| <= tol |b|. In exact arithmetic it is exact
    after n iterations for an n x n system; TRPO stops far earlier (about 10), which is enough
    for a step direction because the line search checks the step anyway.
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr.sqrt() <= tol * b.norm():
            break
        Ap = matvec(p)
        # alpha_k = r_k.r_k / p_k.A p_k
        alpha = rr / (p @ Ap)
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        # p_{k+1} = r_{k+1} + (r_{k+1}.r_{k+1} / r_k.r_k) p_k
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(policy, obs, damping):
    """Return v -> (F + damping I) v without forming F (Pearlmutter 1994's double backprop).

        KLbar(theta) = E_s[KL(pi_theta_old(.|s) || pi_theta(.|s))]
        F = Hessian of KLbar at theta_old
        F v = grad_theta( grad_theta(KLbar)^T v )

    At theta_old the KL's Hessian equals the Fisher information matrix of the policy. Damping
    keeps the system positive definite where the batch's Fisher is nearly singular.
    """
    params = list(policy.parameters())
    logits = policy(obs)
    kl = categorical_kl(logits.detach(), logits).mean()
    grad_kl = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

    def matvec(v):
        # F v = grad( grad(KLbar) . v ), with the first-order graph reused by every CG iteration
        hvp = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
        return parameters_to_vector(hvp) + damping * v

    return matvec


def trpo_step(policy, obs, actions, advantages, max_kl, cg_iters, cg_damping, cg_tol, ls_steps):
    """One TRPO update of `policy` in place on a batch (TRPO sec. 6 and appendix C).

        maximise_theta  L(theta) = E[pi_theta(a|s) / pi_theta_old(a|s) * A]
        subject to      KLbar(theta) = E_s[KL(pi_theta_old(.|s) || pi_theta(.|s))] <= delta

    Linear model of L and quadratic model of KLbar at theta_old: the step is beta s with
    F s = g (conjugate gradient) and beta = sqrt(2 delta / s^T F s), the largest step with
    1/2 (beta s)^T F (beta s) = delta. A backtracking line search (halving, at most `ls_steps`
    tries) accepts the first candidate with real KLbar <= delta and real L above L(theta_old);
    if none passes, theta_old is kept. Returns a dict of statistics for logging.
    """
    params = list(policy.parameters())
    with torch.no_grad():
        old_logits = policy(obs)
        logp_old = F.log_softmax(old_logits, -1).gather(-1, actions[:, None]).squeeze(-1)
    surr_old = surrogate_advantage(policy(obs), actions, logp_old, advantages)
    # g = grad_theta L(theta) at theta_old
    g = parameters_to_vector(torch.autograd.grad(surr_old, params))
    fvp = fisher_vector_product(policy, obs, cg_damping)
    # s ~ F^{-1} g, the natural-gradient direction
    s = conjugate_gradient(fvp, g, cg_iters, cg_tol)
    sFs = s @ fvp(s)
    stats = dict(surrogate=surr_old.item(), kl=0.0, improvement=0.0, expected_improvement=0.0)
    stats.update(line_search_steps=0, accepted=0.0, grad_norm=g.norm().item())
    if not sFs > 0:  # g = 0 (e.g. all advantages equal): no direction to move in
        return stats
    # beta = sqrt(2 delta / s^T F s)
    full_step = torch.sqrt(2 * max_kl / sFs) * s
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for k in range(ls_steps):
            step = 0.5**k * full_step
            vector_to_parameters(theta_old + step, params)
            logits = policy(obs)
            kl = categorical_kl(old_logits, logits).mean().item()
            improvement = surrogate_advantage(logits, actions, logp_old, advantages) - surr_old
            # first-order prediction of the improvement, g^T step
            stats.update(
                kl=kl, improvement=improvement.item(), expected_improvement=(g @ step).item()
            )
            stats.update(line_search_steps=k + 1)
            if kl <= max_kl and improvement.item() > 0:
                stats["accepted"] = 1.0
                return stats
        vector_to_parameters(theta_old, params)
    return stats


def fit_critic(critic, optimizer, obs, returns, epochs, minibatch_size):
    """Regress V(s) on the returns R = A + V_old(s): minimise E[(V(s) - R)^2] with Adam.

    Returns the mean squared error of the last epoch."""
    n = obs.shape[0]
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(n, device=obs.device).split(minibatch_size):
            # loss = mean (V(s) - R)^2
            loss = (critic(obs[idx]).squeeze(-1) - returns[idx]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
    return total / n


def trpo_mlp(n_in, n_out, hidden, out_gain):
    """Two tanh hidden layers; orthogonal init, with a small output gain for the policy so that
    the first policy is near uniform (Andrychowicz et al. 2021, "What matters in on-policy RL")."""
    layers = [nn.Linear(n_in, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
    layers.append(nn.Linear(hidden, n_out))
    for layer, gain in zip(layers[::2], (math.sqrt(2), math.sqrt(2), out_gain), strict=True):
        nn.init.orthogonal_(layer.weight, gain)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def make_trpo_envs(env_id, num_envs, seed):
    """A Gymnasium vector env with next-step autoreset and a Discrete action space."""
    try:
        envs = gym.make_vec(env_id, num_envs=num_envs)
    except gym.error.Error as e:
        raise ValueError(f"--env-id {env_id!r}: {e}") from None
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(
            f"--env-id {env_id!r} has a {envs.single_action_space} action space; "
            "TRPO here needs a Discrete one"
        )
    if (
        not isinstance(envs.single_observation_space, gym.spaces.Box)
        or len(envs.single_observation_space.shape) != 1
    ):
        raise ValueError(f"--env-id {env_id!r} needs a flat Box observation space")
    if envs.metadata.get("autoreset_mode", gym.vector.AutoresetMode.NEXT_STEP) != (
        gym.vector.AutoresetMode.NEXT_STEP
    ):
        raise ValueError(f"--env-id {env_id!r}: only next-step autoreset is supported")
    envs.action_space.seed(seed)
    return envs


def greedy_mean_return(policy, env_id, episodes, seed, device):
    """Mean return of `episodes` episodes (one per parallel env) with the argmax action."""
    envs = make_trpo_envs(env_id, episodes, seed)
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(episodes), np.ones(episodes, dtype=bool)
    while alive.any():
        with torch.no_grad():
            actions = policy(torch.as_tensor(obs, device=device)).argmax(-1)
        obs, reward, terminated, truncated, _ = envs.step(actions.cpu().numpy())
        returns += reward * alive
        alive &= ~(terminated | truncated)
    envs.close()
    return float(returns.mean())


def train(args):
    for name in (
        "total_timesteps",
        "num_envs",
        "num_steps",
        "cg_iters",
        "line_search_steps",
        "critic_epochs",
        "critic_minibatch_size",
        "hidden_size",
    ):
        if getattr(args, name) <= 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    for name in ("max_kl", "learning_rate"):
        if not getattr(args, name) > 0:
            raise ValueError(
                f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}"
            )
    if not (0 <= args.gamma <= 1 and 0 <= args.gae_lambda <= 1):
        raise ValueError("--gamma and --gae-lambda must lie in [0, 1]")
    if args.cg_damping < 0 or args.cg_tol < 0 or args.eval_episodes < 0:
        raise ValueError("--cg-damping, --cg-tol and --eval-episodes must be >= 0")
    batch = args.num_envs * args.num_steps
    if args.total_timesteps < batch:
        raise ValueError(f"--total-timesteps must be at least num_envs*num_steps = {batch}")

    start = time.time()
    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    envs = make_trpo_envs(args.env_id, args.num_envs, args.seed)
    n_obs, n_act = envs.single_observation_space.shape[0], envs.single_action_space.n
    run_name = f"{args.env_id}__trpo__{args.seed}__{int(start)}"
    out = args.output_dir or os.path.join("runs", run_name)
    os.makedirs(out, exist_ok=True)
    writer = SummaryWriter(out)
    episodes_file = open(os.path.join(out, "episodes.csv"), "w", newline="")
    episodes_csv = csv.writer(episodes_file)
    episodes_csv.writerow(["global_step", "episodic_return"])

    policy = trpo_mlp(n_obs, n_act, args.hidden_size, 0.01).to(device)
    critic = trpo_mlp(n_obs, 1, args.hidden_size, 1.0).to(device)
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate)

    T, N = args.num_steps, args.num_envs
    obs_buf = np.zeros((T + 1, N, n_obs), dtype=np.float32)
    act_buf = np.zeros((T, N), dtype=np.int64)
    rew_buf, term_buf, done_buf = (np.zeros((T, N), dtype=np.float32) for _ in range(3))
    valid_buf = np.zeros((T, N), dtype=bool)
    obs, _ = envs.reset(seed=args.seed)
    prev_done = np.zeros(N, dtype=bool)
    ep_return = np.zeros(N)
    recent = deque(maxlen=20)
    global_step, solved_at_step, solved_at_s = 0, None, None
    ckpt = os.path.join(out, "checkpoint.pt")

    for iteration in range(1, args.total_timesteps // batch + 1):
        for t in range(T):
            obs_buf[t] = obs
            # The step after an episode end is Gymnasium's reset step, not a transition.
            valid_buf[t] = ~prev_done
            with torch.no_grad():
                probs = F.softmax(policy(torch.as_tensor(obs, device=device)), -1)
                action = torch.multinomial(probs, 1).squeeze(-1).cpu().numpy()
            obs, reward, terminated, truncated, _ = envs.step(action)
            global_step += N
            prev_done = terminated | truncated
            act_buf[t], rew_buf[t], term_buf[t], done_buf[t] = action, reward, terminated, prev_done
            ep_return += reward
            for i in np.flatnonzero(prev_done):
                recent.append(ep_return[i])
                episodes_csv.writerow([global_step, ep_return[i]])
                writer.add_scalar("charts/episodic_return", ep_return[i], global_step)
                ep_return[i] = 0.0
                if solved_at_step is None and len(recent) == 20 and np.mean(recent) >= 475:
                    solved_at_step, solved_at_s = global_step, time.time() - start
        obs_buf[T] = obs
        episodes_file.flush()

        b = {
            k: torch.as_tensor(v, device=device)
            for k, v in dict(
                obs=obs_buf, act=act_buf, rew=rew_buf, term=term_buf, done=done_buf, valid=valid_buf
            ).items()
        }
        with torch.no_grad():
            values = critic(b["obs"]).squeeze(-1)
            adv = gae_advantages(
                b["rew"], values, b["term"], b["done"], args.gamma, args.gae_lambda
            )
        valid = b["valid"]
        # Only real transitions enter the losses: the reset steps are dropped here.
        b_obs, b_act, b_adv = b["obs"][:T][valid], b["act"][valid], adv[valid]
        b_ret = (adv + values[:T])[valid]
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)

        stats = trpo_step(
            policy,
            b_obs,
            b_act,
            b_adv,
            args.max_kl,
            args.cg_iters,
            args.cg_damping,
            args.cg_tol,
            args.line_search_steps,
        )
        stats["value_loss"] = fit_critic(
            critic, optimizer, b_obs, b_ret, args.critic_epochs, args.critic_minibatch_size
        )
        bad = [k for k, v in stats.items() if not math.isfinite(v)]
        bad += [] if all(torch.isfinite(p).all() for p in critic.parameters()) else ["critic"]
        if bad:
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} at iteration {iteration}; "
                f"the last good checkpoint is {ckpt}"
            )
        save_atomic(
            dict(
                policy=policy.state_dict(),
                critic=critic.state_dict(),
                args=dataclasses.asdict(args),
                global_step=global_step,
            ),
            ckpt,
        )

        for k, v in stats.items():
            writer.add_scalar(f"trpo/{k}", v, global_step)
        sps = int(global_step / (time.time() - start))
        writer.add_scalar("charts/SPS", sps, global_step)
        mean_ret = float(np.mean(recent)) if recent else float("nan")
        print(
            f"iter {iteration:4d}  step {global_step:7d}  return(20) {mean_ret:6.1f}  "
            f"kl {stats['kl']:.4f}  improve {stats['improvement']:+.4f} "
            f"(expected {stats['expected_improvement']:+.4f})  "
            f"ls {stats['line_search_steps']}{'' if stats['accepted'] else ' rejected'}  "
            f"vloss {stats['value_loss']:.3f}  sps {sps}",
            flush=True,
        )

    envs.close()
    episodes_file.close()
    eval_mean = None
    if args.eval_episodes:
        eval_mean = greedy_mean_return(
            policy, args.env_id, args.eval_episodes, args.seed + 10_000, device
        )
        writer.add_scalar("eval/mean_return", eval_mean, global_step)
    writer.close()
    return dict(
        algo="trpo",
        env_id=args.env_id,
        seed=args.seed,
        global_step=global_step,
        solved_at_step=solved_at_step,
        solved_at_s=solved_at_s,
        final_mean_return=float(np.mean(recent)) if recent else None,
        eval_mean_return=eval_mean,
        wall_time_s=time.time() - start,
        output_dir=out,
    )


def main(argv=None):
    """Run train(), print its summary as the last stdout line; bad input exits with one line."""
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints written so far are kept", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
