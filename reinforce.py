"""REINFORCE (Monte Carlo policy gradient) with reward-to-go and a baseline, on CartPole-v1.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning"; the policy gradient theorem as in Sutton et al. 2000. Each update
uses exactly one complete episode per environment, all collected with the current policy.

    python reinforce.py                                  # value baseline: solves CartPole-v1
    python reinforce.py --baseline none --no-normalize-advantages   # textbook REINFORCE
    python reinforce.py --help
"""

import argparse
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
from torch.distributions import Categorical
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
    total_timesteps: int = flag(
        300_000, "environment steps to train for (the last batch may overrun)"
    )
    learning_rate: float = flag(1e-2, "Adam learning rate of the policy")
    value_learning_rate: float = flag(1e-2, "Adam learning rate of V(s) (--baseline value)")
    gamma: float = flag(0.99, "discount factor of the reward-to-go")
    num_envs: int = flag(8, "parallel environments = complete episodes per update")
    baseline: str = flag(
        "value", "none | mean (batch mean of G_t; with normalisation, same as none) | value (V(s))"
    )
    normalize_advantages: bool = flag(True, "scale the advantages of each batch to mean 0, std 1")
    bootstrap_truncated: bool = flag(
        True, "with --baseline value, G_t of a time-limit-truncated episode adds γ^k V(s_final)"
    )
    ent_coef: float = flag(0.0, "weight of the entropy bonus; 0 turns it off")
    max_grad_norm: float = flag(0.5, "clip each network's gradient norm to this; 0 turns it off")
    hidden_size: int = flag(64, "width of the two hidden layers of the policy and of V(s)")
    eval_episodes: int = flag(0, "greedy evaluation episodes after training; 0 skips it")


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


# The policy gradient theorem (Sutton et al. 2000), in its Monte Carlo form (Williams 1992):
#     ∇θ J(θ) = E_τ~πθ [ Σ_t ∇θ log πθ(a_t|s_t) · G_t ],   G_t = Σ_k γ^k r_{t+k+1}.
# Reward-to-go: an action cannot influence rewards that came before it (causality). For
# k < t, r_{k+1} is fixed once the history up to s_t is, and a_t ~ π(·|s_t) is drawn after
# it, so E[∇ log π(a_t|s_t) · r_{k+1}] = E[r_{k+1} · E_{a_t~π}[∇ log π(a_t|s_t)]] = 0, as
# Σ_a π ∇ log π = ∇ Σ_a π = ∇1 = 0. The whole-episode return can thus be replaced by G_t:
# that drops terms of mean zero, and with them their variance.
# Baseline: for any b(s_t) that does not depend on a_t, E[∇ log π(a_t|s_t) · b(s_t)] = 0 by
# the same identity, so G_t − b(s_t) is an unbiased weight; b ≈ V(s_t) = E[G_t|s_t] makes it
# small, which lowers the variance.
# With γ < 1 we drop the γ^t factor the discounted theorem puts in front of each term, as
# nearly all implementations do: the result is not exactly ∇ of the discounted objective
# (Nota & Thomas 2020, "Is the policy gradient a gradient?"). With γ = 1 it is exact.


def reward_to_go(rewards, ends, bootstrap, gamma):
    """Discounted reward-to-go along the time axis (dim 0), restarting at episode ends:

        G_t = r_{t+1} + γ G_{t+1}             inside an episode,
        G_t = r_{t+1} + γ bootstrap_t         on the last step of an episode (ends_t = 1).

    rewards[t] is the reward that followed the action at t; bootstrap is 0 for a terminated
    episode (and for pure Monte Carlo), V(s_final) for a time-limit-truncated one.
    """
    returns = torch.zeros_like(rewards)
    next_return = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # G_t = r_{t+1} + γ [(1 − end_t) G_{t+1} + end_t · bootstrap_t]
        next_return = rewards[t] + gamma * torch.where(ends[t], bootstrap[t], next_return)
        returns[t] = next_return
    return returns


def advantage_estimate(returns, values, baseline, normalize):
    """Â_t = G_t − b_t, with b_t = 0 (none), mean(G) over the batch (mean) or V(s_t) (value);
    then optionally Â ← (Â − mean Â) / (std Â + 1e-8).

    V must come from parameters fitted before this batch, so that b_t does not depend on a_t.
    The batch mean contains G_t itself: its bias is O(1/batch size), negligible here; and
    normalisation subtracts the mean anyway, so with it "mean" and "none" coincide.
    Normalisation is a per-batch change of step size that keeps the sign of every weight
    relative to the batch mean (Schulman et al.'s implementations; Andrychowicz et al. 2021).
    """
    # Â_t = G_t − b_t
    if baseline == "none":
        adv = returns
    elif baseline == "mean":
        adv = returns - returns.mean()
    else:
        adv = returns - values.detach()
    # Â ← (Â − mean Â) / (std Â + 1e-8)
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def reinforce_loss(logprob, advantages):
    """Surrogate whose gradient is the REINFORCE estimate, averaged over all steps:

        L(θ) = −mean_t [ log πθ(a_t|s_t) · Â_t ],   −∇θ L = mean_t ∇θ log πθ(a_t|s_t) Â_t.

    Â_t is a constant here (no gradient flows through the baseline)."""
    # L = −mean(log π(a_t|s_t) · Â_t)
    return -(logprob * advantages.detach()).mean()


def value_regression_loss(values, returns):
    """Regression of the baseline on the returns: L_V = ½ mean_t (V(s_t) − G_t)²."""
    # L_V = ½ mean (V(s_t) − G_t)²
    return 0.5 * (values - returns).pow(2).mean()


def reinforce_mlp(in_dim, out_dim, hidden, last_std):
    """Two tanh hidden layers; orthogonal init, the last layer scaled by last_std (a policy
    head of 0.01 starts near uniform, Andrychowicz et al. 2021)."""
    layers = [nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()]
    layers.append(nn.Linear(hidden, out_dim))
    for layer, std in zip(layers[::2], (np.sqrt(2), np.sqrt(2), last_std), strict=True):
        nn.init.orthogonal_(layer.weight, std)
        nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def make_reinforce_envs(env_id, num_envs):
    """A Gymnasium vector env: the numpy-vectorised implementation where the environment has
    one (CartPole does), else one copy per env in this process."""
    try:
        spec = gym.spec(env_id)
        mode = "vector_entry_point" if spec.vector_entry_point is not None else "sync"
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    except gym.error.Error as e:
        raise ValueError(f"cannot make --env-id {env_id!r}: {e}") from None
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        envs.close()
        raise ValueError(
            f"--env-id {env_id} has action space {envs.single_action_space}; "
            "this script needs a Discrete one (e.g. CartPole-v1)"
        )
    if not isinstance(envs.single_observation_space, gym.spaces.Box):
        envs.close()
        raise ValueError(f"--env-id {env_id} needs a Box observation space")
    return envs


@torch.no_grad()
def collect_episodes(envs, policy, device, greedy=False, seed=None):
    """Play exactly one episode in every env, from a fresh reset, with the current policy.

    One episode per env makes the batch an i.i.d. sample of episodes (keeping every episode
    that ends before some deadline would favour short ones), and every episode is complete
    and on-policy. An env whose episode is over is still stepped by the vector env, but
    nothing it returns is kept: its autoreset step and next episode never enter the batch,
    so the autoreset mode does not matter here. Returns [T, N] tensors (obs: [T, N, obs_dim]);
    `alive` marks the steps that belong to an episode.
    """
    obs, _ = envs.reset(seed=seed)
    alive = np.ones(envs.num_envs, dtype=bool)
    steps = []
    while alive.any():
        logits = policy(torch.as_tensor(obs, dtype=torch.float32, device=device).flatten(1))
        action = logits.argmax(-1) if greedy else Categorical(logits=logits).sample()
        action = action.cpu().numpy()
        next_obs, reward, terminated, truncated, _ = envs.step(action)
        end = terminated | truncated
        steps.append((obs, action, reward * alive, end & alive, truncated & alive, next_obs, alive))
        alive = alive & ~end
        obs = next_obs
    keys = ("obs", "actions", "rewards", "ends", "truncated", "final_obs", "alive")
    columns = zip(*steps, strict=True)
    batch = {
        k: torch.as_tensor(np.stack(v), device=device) for k, v in zip(keys, columns, strict=True)
    }
    for k in ("obs", "final_obs"):
        batch[k] = batch[k].float().flatten(2)
    batch["rewards"] = batch["rewards"].float()
    return batch


def check_reinforce_args(args):
    """Reject settings that would fail later with an obscure error, saying what to fix."""
    for name in ("total_timesteps", "num_envs", "hidden_size", "learning_rate"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if not args.value_learning_rate > 0:
        raise ValueError("--value-learning-rate must be positive")
    for name in ("ent_coef", "max_grad_norm", "eval_episodes"):
        if not getattr(args, name) >= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 <= args.gamma <= 1:
        raise ValueError(f"--gamma must lie in [0, 1], not {args.gamma}")
    if args.baseline not in ("none", "mean", "value"):
        raise ValueError(f"--baseline must be none, mean or value, not {args.baseline!r}")


def train(args):
    check_reinforce_args(args)
    start = time.time()
    run_name = f"{args.env_id}__reinforce__{args.seed}__{int(start)}"
    out_dir = args.output_dir or os.path.join("runs", run_name)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_reinforce_envs(args.env_id, args.num_envs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = int(envs.single_action_space.n)
    policy = reinforce_mlp(obs_dim, n_actions, args.hidden_size, 0.01).to(device)
    value = reinforce_mlp(obs_dim, 1, args.hidden_size, 1.0).to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": policy.parameters(), "lr": args.learning_rate},
            {"params": value.parameters(), "lr": args.value_learning_rate},
        ]
    )

    os.makedirs(out_dir, exist_ok=True)
    writer = SummaryWriter(out_dir)
    writer.add_text("args", json.dumps(dataclasses.asdict(args)))
    ckpt_path = os.path.join(out_dir, "checkpoint.pt")
    episodes_csv = open(os.path.join(out_dir, "episodes.csv"), "w")
    episodes_csv.write("global_step,episodic_return\n")
    print(f"reinforce on {args.env_id}: {device}, output in {out_dir}", flush=True)

    global_step, iteration, simulated = 0, 0, 0
    recent = deque(maxlen=20)
    solved_at_step = solved_at_s = None
    t0 = time.time()
    while global_step < args.total_timesteps:
        iteration += 1
        batch = collect_episodes(envs, policy, device, seed=args.seed if iteration == 1 else None)
        alive, ends = batch["alive"], batch["ends"]

        # Episode bookkeeping in finishing order; global_step counts live transitions only,
        # i.e. exactly the steps a one-env implementation would take for the same episodes.
        live_per_step = alive.sum(1).cpu().numpy()
        ep_return = batch["rewards"].sum(0).cpu().numpy()
        for t, env_idx in ends.nonzero().cpu().numpy():
            step_at_end = global_step + int(live_per_step[: t + 1].sum())
            recent.append(float(ep_return[env_idx]))
            episodes_csv.write(f"{step_at_end},{ep_return[env_idx]:g}\n")
            writer.add_scalar("charts/episodic_return", ep_return[env_idx], step_at_end)
            if solved_at_step is None and len(recent) == 20 and np.mean(recent) >= 475:
                solved_at_step, solved_at_s = step_at_end, round(time.time() - t0, 2)
                print(f"solved at step {solved_at_step} ({solved_at_s} s)", flush=True)
        global_step += int(live_per_step.sum())
        simulated += alive.numel()  # including the idle steps of envs already done
        episodes_csv.flush()

        # CartPole stops at 500 steps by truncation, not failure. Pure Monte Carlo counts the
        # missing tail as 0, which tells the policy that the last actions of a perfect
        # episode were bad, and gives V a target that depends on the time step, which V cannot
        # see. With the value baseline we add γ^k V(s_final) instead, V as fitted before this
        # batch: the one place V enters G_t itself (a bootstrap, so G_t is then biased by V's
        # error there). Without V the cut is treated as an ending, as in the textbook.
        bootstrap = torch.zeros_like(batch["rewards"])
        truncated = batch["truncated"]
        if args.baseline == "value" and args.bootstrap_truncated and truncated.any():
            with torch.no_grad():
                bootstrap[truncated] = value(batch["final_obs"][truncated]).squeeze(-1)
        returns = reward_to_go(batch["rewards"], ends, bootstrap, args.gamma)[alive]
        obs = batch["obs"][alive]
        values = value(obs).squeeze(-1) if args.baseline == "value" else None
        adv = advantage_estimate(returns, values, args.baseline, args.normalize_advantages)
        dist = Categorical(logits=policy(obs))
        entropy = dist.entropy().mean()
        pg_loss = reinforce_loss(dist.log_prob(batch["actions"][alive]), adv)
        v_loss = value_regression_loss(values, returns) if values is not None else None
        loss = pg_loss - args.ent_coef * entropy + (v_loss if v_loss is not None else 0)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at iteration {iteration} (step {global_step}); the last good "
                f"checkpoint is {ckpt_path}; try a lower --learning-rate"
            )
        optimizer.zero_grad()
        loss.backward()
        # Clip each network on its own: V's squared error on returns of order 1/(1−γ) has a
        # far larger gradient than the policy's, and would dominate a joint norm.
        grad_norm = torch.zeros(())
        if args.max_grad_norm > 0:
            grad_norm = nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            nn.utils.clip_grad_norm_(value.parameters(), args.max_grad_norm)
        optimizer.step()
        if not all(torch.isfinite(p).all() for p in [*policy.parameters(), *value.parameters()]):
            raise FloatingPointError(
                f"non-finite parameters after the update of iteration {iteration}; the last "
                f"good checkpoint is {ckpt_path}; try a lower --learning-rate"
            )
        save_atomic(
            {
                "policy": policy.state_dict(),
                "value": value.state_dict(),
                "optimizer": optimizer.state_dict(),
                "args": dataclasses.asdict(args),
                "iteration": iteration,
                "global_step": global_step,
            },
            ckpt_path,
        )

        sps = int(global_step / (time.time() - t0))
        for tag, val in (
            ("losses/policy_loss", pg_loss.item()),
            ("losses/value_loss", v_loss.item() if v_loss is not None else 0.0),
            ("losses/entropy", entropy.item()),
            ("losses/policy_grad_norm", float(grad_norm)),
            ("charts/episodes_per_update", int(ends.sum())),
            ("charts/SPS", sps),
        ):
            writer.add_scalar(tag, val, global_step)
        if iteration % 10 == 0:
            print(
                f"iter {iteration:4d}  step {global_step:7d}  return(last 20) "
                f"{np.mean(recent):6.1f}  entropy {entropy.item():.3f}  {sps} steps/s",
                flush=True,
            )
    episodes_csv.close()
    envs.close()

    eval_mean = None
    if args.eval_episodes:
        eval_envs = make_reinforce_envs(args.env_id, args.eval_episodes)
        eval_batch = collect_episodes(
            eval_envs, policy, device, greedy=True, seed=args.seed + 10_000
        )
        eval_mean = float(eval_batch["rewards"].sum(0).double().mean())
        eval_envs.close()
        writer.add_scalar("charts/eval_mean_return", eval_mean, global_step)
    writer.close()
    return {
        "algo": "reinforce",
        "env_id": args.env_id,
        "seed": args.seed,
        "global_step": global_step,
        "solved_at_step": solved_at_step,
        "solved_at_s": solved_at_s,
        "final_mean_return": float(np.mean(recent)) if recent else None,
        "eval_mean_return": eval_mean,
        "wall_time_s": round(time.time() - start, 2),
        "env_steps_simulated": simulated,
        "output_dir": out_dir,
    }


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
