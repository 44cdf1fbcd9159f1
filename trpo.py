"""Trust Region Policy Optimization (TRPO) with conjugate gradient on CartPole-v1, in one file.

Schulman et al. 2015, "Trust Region Policy Optimization" (https://arxiv.org/abs/1502.05477),
with generalized advantage estimation, Schulman et al. 2015 (https://arxiv.org/abs/1506.02438):
each iteration takes one natural-gradient step, found by conjugate gradient on Fisher-vector
products, scaled to the edge of a KL trust region and checked by a backtracking line search.

    python trpo.py                       # solves CartPole-v1
    python trpo.py --max-kl 0.02 --seed 2
    python trpo.py --help
"""

import argparse
import copy
import dataclasses
import json
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
    total_timesteps: int = flag(150_000, "environment steps to train for, over all envs")
    num_envs: int = flag(8, "parallel environments")
    num_steps: int = flag(128, "steps per environment per rollout (one TRPO step each)")
    gamma: float = flag(0.99, "discount factor γ")
    gae_lambda: float = flag(0.98, "GAE λ: 0 is one-step TD, 1 is Monte Carlo")
    max_kl: float = flag(0.01, "δ, the trust region: the bound on the mean KL of one update")
    cg_iters: int = flag(10, "most conjugate-gradient iterations for F s = g")
    cg_damping: float = flag(0.1, "added to the Fisher matrix, (F + damping·I) s = g")
    cg_tol: float = flag(1e-8, "conjugate gradient stops once |residual| <= cg_tol·|g|")
    line_search_steps: int = flag(10, "most backtracking steps; each halves the step")
    learning_rate: float = flag(1e-3, "Adam step size of the critic")
    critic_epochs: int = flag(20, "passes of critic regression over each rollout")
    critic_minibatch_size: int = flag(512, "minibatch size of the critic regression")
    hidden_size: int = flag(64, "width of the two hidden layers of policy and critic")
    eval_episodes: int = flag(0, "after training, evaluate the greedy policy on N episodes")


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


def check_trpo_args(args):
    """Reject settings that would fail later with an obscure error, saying what to fix."""
    for name in ("total_timesteps", "num_envs", "num_steps", "cg_iters", "line_search_steps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    for name in ("critic_epochs", "critic_minibatch_size", "hidden_size", "learning_rate"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if not args.max_kl > 0:
        raise ValueError("--max-kl must be positive")
    if not (args.cg_damping >= 0 and args.cg_tol >= 0 and args.eval_episodes >= 0):
        raise ValueError("--cg-damping, --cg-tol and --eval-episodes must be >= 0")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ValueError("--gamma and --gae-lambda must lie in [0, 1]")


# ---------------------------------------------------------------------------------------
# The math. Each function takes all it uses as arguments, so tests can check it alone.
# ---------------------------------------------------------------------------------------


def gae(rewards, values, terminated, dones, gamma, lam):
    """Generalized advantage estimation over a [T, N] rollout.

    δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t)
    Â_t = δ_t + γ λ (1 − done_t) Â_{t+1}

    `values` has T + 1 rows: values[T] is V of the observation after the last step. With
    Gymnasium's next-step autoreset, the row after an episode's last step holds that
    episode's final observation, so at a truncation δ_t bootstraps with V(final obs) while
    the recursion still stops (done = terminated or truncated). Returns Â, shape [T, N].
    """
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t): only a real terminal state
        # has value 0; a time-limit cut keeps the bootstrap.
        delta = rewards[t] + gamma * values[t + 1] * (1 - terminated[t]) - values[t]
        # Â_t = δ_t + γλ (1 − done_t) Â_{t+1}: advantages never leak across episodes.
        next_adv = delta + gamma * lam * (1 - dones[t]) * next_adv
        advantages[t] = next_adv
    return advantages


def categorical_kl(logits_p, logits_q):
    """KL(p ‖ q) = Σ_a p(a) (log p(a) − log q(a)) per state, for p = softmax(logits_p)."""
    logp, logq = F.log_softmax(logits_p, -1), F.log_softmax(logits_q, -1)
    # KL(p ‖ q) = Σ_a p(a) (log p(a) − log q(a))
    return (logp.exp() * (logp - logq)).sum(-1)


def surrogate_advantage(logits, action, logp_old, adv):
    """The surrogate objective of TRPO (its eq. 14), to be maximised:

    L(θ) = E[π_θ(a|s) / π_θold(a|s) · Â]

    At θ = θ_old it equals E[Â], and its gradient there is the policy gradient g.
    """
    logp = F.log_softmax(logits, -1).gather(-1, action[:, None]).squeeze(-1)
    # L(θ) = mean( exp(log π_θ − log π_θold) · Â )
    return (torch.exp(logp - logp_old) * adv).mean()


def conjugate_gradient(matvec, b, iters, tol):
    """Solve A x = b for a symmetric positive-definite A known only through v ↦ A v
    (Hestenes and Stiefel 1952), starting from x_0 = 0, r_0 = p_0 = b:

    α_k = r_kᵀr_k / p_kᵀA p_k,   x_{k+1} = x_k + α_k p_k,   r_{k+1} = r_k − α_k A p_k
    p_{k+1} = r_{k+1} + (r_{k+1}ᵀr_{k+1} / r_kᵀr_k) p_k

    Stops after `iters` iterations or once |r_k| <= tol·|b|. In exact arithmetic it solves an
    n×n system in n iterations; TRPO stops after about 10, because a rough direction is enough
    when the line search checks the step anyway.
    """
    x = torch.zeros_like(b)
    r, p = b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr.sqrt() <= tol * b.norm():
            break
        Ap = matvec(p)
        # α_k = r_kᵀr_k / p_kᵀA p_k
        alpha = rr / (p @ Ap)
        x = x + alpha * p
        r = r - alpha * Ap
        rr_new = r @ r
        # p_{k+1} = r_{k+1} + (r_{k+1}ᵀr_{k+1} / r_kᵀr_k) p_k
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def fisher_vector_product(policy, obs, damping):
    """Return v ↦ (F + damping·I) v, without ever forming the matrix F:

    KL̄(θ) = E_s[KL(π_θold(·|s) ‖ π_θ(·|s))],   F = ∇²_θ KL̄ at θ = θ_old
    F v = ∇_θ((∇_θ KL̄)ᵀ v)                   (Pearlmutter 1994: double backprop)

    At θ_old the Hessian of the KL is the Fisher information matrix of the policy (the first
    derivative is zero there). Damping keeps the system positive definite where the batch's
    Fisher matrix is nearly singular.
    """
    params = list(policy.parameters())
    logits = policy(obs)
    # KL̄(θ) with π_θold frozen: its value is 0 but its first and second derivatives are not.
    kl = categorical_kl(logits.detach(), logits).mean()
    grad_kl = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

    def matvec(v):
        # F v = ∇_θ((∇_θ KL̄)ᵀ v); every CG iteration reuses the graph of ∇_θ KL̄
        hvp = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
        return parameters_to_vector(hvp) + damping * v

    return matvec


def trpo_step(policy, obs, action, adv, max_kl, cg_iters, cg_damping, cg_tol, ls_steps):
    """One TRPO update of `policy`, in place, on one batch (TRPO §6 and appendix C):

    maximise_θ  L(θ) = E[π_θ(a|s) / π_θold(a|s) · Â]
    subject to  KL̄(θ) = E_s[KL(π_θold(·|s) ‖ π_θ(·|s))] <= δ

    With L linearised (gradient g) and KL̄ expanded to second order (Fisher F) at θ_old, the
    solution is θ_old + β s with F s = g (conjugate gradient) and β = sqrt(2δ / sᵀF s), the
    step that puts the quadratic model exactly on the boundary: ½ (βs)ᵀF(βs) = δ. The models
    are only local, so a backtracking line search tries β s, β s/2, β s/4, ... (at most
    `ls_steps` candidates) and accepts the first with the real KL̄ <= δ and the real L above
    L(θ_old); if none passes, θ_old is kept. Returns statistics for the logs.
    """
    params = list(policy.parameters())
    with torch.no_grad():
        old_logits = policy(obs)
        logp_old = F.log_softmax(old_logits, -1).gather(-1, action[:, None]).squeeze(-1)
    surr_old = surrogate_advantage(policy(obs), action, logp_old, adv)
    # g = ∇_θ L(θ) at θ_old
    g = parameters_to_vector(torch.autograd.grad(surr_old, params))
    fvp = fisher_vector_product(policy, obs, cg_damping)
    # s ≈ F⁻¹ g, the natural-gradient direction
    s = conjugate_gradient(fvp, g, cg_iters, cg_tol)
    sFs = s @ fvp(s)
    stats = dict(surrogate=surr_old.item(), kl=0.0, improvement=0.0, expected_improvement=0.0)
    stats.update(line_search_steps=0, accepted=0.0, grad_norm=g.norm().item())
    if not sFs > 0:  # g = 0 (all Â equal): no direction to move in; NaN is left to the caller
        return stats
    # β = sqrt(2δ / sᵀF s)
    full_step = torch.sqrt(2 * max_kl / sFs) * s
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for k in range(ls_steps):
            step = 0.5**k * full_step
            vector_to_parameters(theta_old + step, params)
            logits = policy(obs)
            kl = categorical_kl(old_logits, logits).mean().item()
            improvement = (surrogate_advantage(logits, action, logp_old, adv) - surr_old).item()
            # the linear model's prediction of the improvement: gᵀ step
            expected = (g @ step).item()
            stats.update(kl=kl, improvement=improvement, expected_improvement=expected)
            stats["line_search_steps"] = k + 1
            if kl <= max_kl and improvement > 0:
                stats["accepted"] = 1.0
                return stats
        vector_to_parameters(theta_old, params)
    return stats


def fit_critic(critic, optimizer, obs, returns, epochs, minibatch_size):
    """Regress V(s) on the λ-returns V^targ = Â + V_old(s) with Adam on shuffled minibatches:

    minimise E[(V(s) − V^targ)²]

    Returns the mean squared error over the last epoch.
    """
    for _epoch in range(epochs):
        total = 0.0
        for mb in torch.randperm(len(obs), device=obs.device).split(minibatch_size):
            # E[(V(s) − V^targ)²]
            loss = (critic(obs[mb]).squeeze(-1) - returns[mb]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(mb)
    return total / len(obs)


# ---------------------------------------------------------------------------------------
# The networks
# ---------------------------------------------------------------------------------------


def trpo_mlp(in_dim, out_dim, hidden, last_std):
    """Two tanh hidden layers, orthogonal weights with gain √2 and zero biases; the last layer's
    gain is 0.01 for the policy, so that the first policy is near uniform, and 1 for the critic
    (implementation details #2 of Huang et al. 2022, "The 37 implementation details of PPO").
    The policy outputs logits; the critic, a separate network, outputs V(s)."""
    net = nn.Sequential(
        nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
        nn.Linear(hidden, out_dim),
    )  # fmt: skip
    for layer, std in zip(net[::2], (2**0.5, 2**0.5, last_std), strict=True):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return net


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def make_trpo_envs(env_id, num_envs):
    """A Gymnasium >= 1.0 vector env with next-step autoreset. make_vec's default picks the
    numpy-vectorised version when the environment has one (CartPole does), else "sync"."""
    try:
        envs = gym.make_vec(env_id, num_envs=num_envs)
    except gym.error.Error as e:
        raise ValueError(f"cannot make --env-id {env_id!r}: {e}") from None
    space, obs_space = envs.single_action_space, envs.single_observation_space
    if not isinstance(space, gym.spaces.Discrete):
        envs.close()
        raise ValueError(f"--env-id {env_id} has {space}; TRPO here needs a Discrete one")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        envs.close()
        raise ValueError(f"--env-id {env_id} has {obs_space}; need a flat Box")
    if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
        envs.close()
        raise ValueError(f"--env-id {env_id} does not autoreset in the next step")
    return envs


def greedy_mean_return(policy, env_id, episodes, seed, device):
    """Mean return of the greedy policy, one episode in each of `episodes` parallel envs
    (taking the first `episodes` finishers of fewer envs would favour short episodes)."""
    envs = make_trpo_envs(env_id, episodes)
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(episodes), np.ones(episodes, bool)
    while alive.any():
        with torch.no_grad():
            action = policy(torch.as_tensor(obs, device=device)).argmax(-1)
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
        returns += reward * alive
        alive &= ~(term | trunc)
    envs.close()
    return float(returns.mean())


def trpo_rollout(policy, envs, obs, prev_done, num_steps, device):
    """Collect num_steps steps in each env with actions sampled from π_θold.

    Returns (batch, obs, prev_done). The batch holds [T, N] tensors; "obs" has T + 1 rows, the
    last being the observation after the final step. prev_done says which envs ended an
    episode in their last step and so will reset in their next.
    """
    T, N = num_steps, envs.num_envs
    obs_buf = np.zeros((T + 1, *obs.shape), np.float32)
    reward, terminated, done, valid = (np.zeros((T, N), np.float32) for _ in range(4))
    action = np.zeros((T, N), np.int64)
    for t in range(T):
        obs_buf[t] = obs
        # Gymnasium >= 1.0 autoresets in the *next* step: the step after an episode's end
        # ignores the action, returns reward 0 and the new episode's first observation. It
        # is not a transition of the MDP, so it is marked invalid and gets no loss.
        valid[t] = ~prev_done
        with torch.no_grad():
            probs = F.softmax(policy(torch.as_tensor(obs, device=device)), -1)
        action[t] = torch.multinomial(probs, 1).squeeze(-1).cpu().numpy()
        obs, reward[t], terminated[t], truncated, _ = envs.step(action[t])
        prev_done = terminated[t].astype(bool) | truncated
        done[t] = prev_done
    # After a truncation the next row holds the final observation, so V of it is the
    # bootstrap value that gae() needs (truncation is not termination).
    obs_buf[T] = obs
    arrays = dict(obs=obs_buf, action=action, reward=reward, terminated=terminated, done=done)
    batch = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    batch["valid"] = torch.as_tensor(valid > 0, device=device)
    return batch, obs, prev_done


def train(args):
    check_trpo_args(args)
    start = time.time()
    run_name = f"{args.env_id}__trpo__{args.seed}__{int(start)}"
    out = args.output_dir or os.path.join("runs", run_name)
    os.makedirs(out, exist_ok=True)
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_trpo_envs(args.env_id, args.num_envs)
    obs_dim = envs.single_observation_space.shape[0]
    policy = trpo_mlp(obs_dim, envs.single_action_space.n, args.hidden_size, 0.01).to(device)
    critic = trpo_mlp(obs_dim, 1, args.hidden_size, 1.0).to(device)
    # Only the critic has an optimizer: the policy moves by the TRPO step alone.
    optimizer = torch.optim.Adam(critic.parameters(), lr=args.learning_rate)

    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    obs, _ = envs.reset(seed=args.seed)
    prev_done = np.zeros(args.num_envs, bool)
    ep_return = np.zeros(args.num_envs)
    recent = deque(maxlen=20)
    episodes = []  # (global_step, return) of every finished training episode
    solved_at_step = solved_at_s = None
    global_step = 0
    last_good = copy.deepcopy(dict(policy=policy.state_dict(), critic=critic.state_dict()))
    t0 = time.time()
    print(f"training {args.env_id} for {args.total_timesteps} steps; logs in {out}")

    try:
        for iteration in range(1, num_iterations + 1):
            b, obs, prev_done = trpo_rollout(policy, envs, obs, prev_done, args.num_steps, device)
            for reward, done in zip(
                b["reward"].cpu().numpy(), b["done"].cpu().numpy().astype(bool), strict=True
            ):
                global_step += args.num_envs
                ep_return += reward
                for ret in ep_return[done]:
                    episodes.append((global_step, ret))
                    recent.append(ret)
                    writer.add_scalar("charts/episodic_return", ret, global_step)
                    if solved_at_step is None and len(recent) == 20 and np.mean(recent) >= 475:
                        solved_at_step, solved_at_s = global_step, time.time() - t0
                        print(f"solved at step {global_step} after {solved_at_s:.1f}s")
                ep_return[done] = 0

            with torch.no_grad():
                value = critic(b["obs"]).squeeze(-1)
            adv = gae(b["reward"], value, b["terminated"], b["done"], args.gamma, args.gae_lambda)
            # V^targ = Â + V(s): the λ-return, the critic's regression target.
            ret = adv + value[:-1]

            # Train only on real transitions (drop the reset steps).
            keep = b["valid"].flatten()
            b_obs, b_act = b["obs"][:-1].flatten(0, 1)[keep], b["action"].flatten()[keep]
            b_adv, b_ret = adv.flatten()[keep], ret.flatten()[keep]
            # Normalised Â. Its scale cannot change the step (s ∝ g and β ∝ 1/|g|, so δ alone
            # sets the length); subtracting the mean is one more baseline, against variance.
            b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)

            stats = trpo_step(
                policy, b_obs, b_act, b_adv, args.max_kl, args.cg_iters, args.cg_damping,
                args.cg_tol, args.line_search_steps,
            )  # fmt: skip
            stats["value_loss"] = fit_critic(
                critic, optimizer, b_obs, b_ret, args.critic_epochs, args.critic_minibatch_size
            )
            params = torch.cat([p.detach().flatten() for p in policy.parameters()])
            params = torch.cat([params, *(p.detach().flatten() for p in critic.parameters())])
            if not (np.isfinite(list(stats.values())).all() and torch.isfinite(params).all()):
                raise FloatingPointError(
                    f"non-finite loss at iteration {iteration}; the checkpoint keeps the "
                    "parameters of the iteration before; try a lower --learning-rate or --max-kl"
                )
            last_good = copy.deepcopy(dict(policy=policy.state_dict(), critic=critic.state_dict()))
            sps = int(global_step / (time.time() - t0))
            for name, value in stats.items():
                writer.add_scalar(f"trpo/{name}", value, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            mean = np.mean(recent) if recent else float("nan")
            print(
                f"iter {iteration:3d} step {global_step:6d} mean_return(last 20)={mean:5.1f} "
                f"kl={stats['kl']:.4f} improvement={stats['improvement']:+.4f} "
                f"(expected {stats['expected_improvement']:+.4f}) "
                f"line_search_steps={stats['line_search_steps']}"
                f"{'' if stats['accepted'] else ' (rejected: θ_old kept)'} SPS={sps}"
            )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C alike.
        save_atomic({**last_good, "args": dataclasses.asdict(args)}, os.path.join(out, "trpo.pt"))
        np.savetxt(
            os.path.join(out, "episodes.csv.tmp"),
            np.array(episodes).reshape(-1, 2),
            fmt="%g",
            delimiter=",",
            header="global_step,episodic_return",
            comments="",
        )
        os.replace(os.path.join(out, "episodes.csv.tmp"), os.path.join(out, "episodes.csv"))
        envs.close()
        writer.close()

    eval_return = None
    if args.eval_episodes > 0:
        eval_return = greedy_mean_return(
            policy, args.env_id, args.eval_episodes, args.seed + 10_000, device
        )
        print(
            f"eval: mean return of the greedy policy over {args.eval_episodes} episodes "
            f"= {eval_return:.1f}"
        )
    return {
        "algo": "trpo",
        "env_id": args.env_id,
        "seed": args.seed,
        "global_step": global_step,
        "solved_at_step": solved_at_step,
        "solved_at_s": None if solved_at_s is None else round(solved_at_s, 2),
        "final_mean_return": float(np.mean(recent)) if recent else None,
        "eval_mean_return": eval_return,
        "wall_time_s": round(time.time() - start, 2),
        "output_dir": out,
    }


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


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
