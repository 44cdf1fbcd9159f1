"""REINFORCE (Monte Carlo policy gradient) with reward-to-go and a baseline, on CartPole-v1.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning"; the policy gradient theorem as in Sutton et al. 2000. Each update
uses exactly one complete episode per environment, all collected with the current policy.

    python reinforce.py                                  # value baseline: solves CartPole-v1
    python reinforce.py --baseline none --no-normalize-advantages   # textbook REINFORCE
    python reinforce.py --help
"""

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import random
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass

try:  # Ctrl-C while torch loads (a second or two) gets one line, not a traceback
    import gymnasium as gym
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from torch.distributions import Categorical
    from torch.utils.tensorboard import SummaryWriter
except KeyboardInterrupt:
    sys.exit("error: interrupted while starting up; nothing was written")

SCRIPT = "reinforce.py"  # recorded in checkpoints, checked when one is loaded


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the environments")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and checkpoints go here; default runs/<run-name>")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
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
    eval_checkpoint: str = flag(
        "", "evaluate this saved checkpoint.pt on --eval-episodes; no training"
    )
    capture_video: bool = flag(False, "save the evaluation episodes as MP4 in <output-dir>/videos")


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


def check_flags(args, positive=(), nonneg=(), unit=()):
    """The one rule every script applies to its numeric flags, naming the flag at fault: every
    float flag finite (a NaN trains nothing and an inf stalls it); every count, step size or
    norm bound > 0 (a negative gradient-norm bound would flip the gradient); every weight, ε
    or tolerance ≥ 0; every probability, γ or λ in [0, 1]."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{field.name.replace('_', '-')} must be finite, not {value}")
    rules = (
        (positive, lambda v: v > 0, "positive"),
        (nonneg, lambda v: v >= 0, "0 or more"),
        (unit, lambda v: 0 <= v <= 1, "in [0, 1]"),
    )
    for names, ok, what in rules:
        for name in names:
            if not ok(getattr(args, name)):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be {what}, not {getattr(args, name)}"
                )


def check_memory(nbytes, flags):
    """ValueError, before anything is allocated, if about `nbytes` would not fit in half of
    this machine's memory: numpy and torch would fail with a traceback, or the run would swap."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > total / 2:
        gib = min(nbytes, 2**100) / 2**30  # a huge int would overflow the float division
        raise ValueError(f"{flags} need about {gib:.3g} GiB, more than half of this "
                         f"machine's {total / 2**30:.0f} GiB; lower them")  # fmt: skip


def check_args(args):
    """Reject settings that would fail later with an obscure error, saying what to fix."""
    check_flags(args, positive=("total_timesteps", "num_envs", "hidden_size", "learning_rate",
                                "value_learning_rate"),
                nonneg=("seed", "ent_coef", "max_grad_norm", "eval_episodes"),
                unit=("gamma",))  # fmt: skip
    # numpy's seeds are 32-bit; the optimizer's first step, ~10 lr, must fit in a float32; one
    # environment object per env or evaluation episode.
    most = dict(seed=2**32 - 1, learning_rate=1e37, value_learning_rate=1e37, num_envs=10_000,
                eval_episodes=10_000)  # fmt: skip
    for name, bound in most.items():
        if getattr(args, name) > bound:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {bound}, not "
                             f"{getattr(args, name)}")  # fmt: skip
    # 3 weight copies (weights, Adam's two moments) of the two MLPs.
    check_memory(4 * 3 * 2 * 2 * args.hidden_size**2, "the networks of --hidden-size")
    if args.baseline not in ("none", "mean", "value"):
        raise ValueError(f"--baseline must be none, mean or value, not {args.baseline!r}")
    if args.eval_checkpoint and args.eval_episodes == 0:
        raise ValueError("--eval-episodes must be > 0 with --eval-checkpoint")


# ---------------------------------------------------------------------------------------
# The math
# ---------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------
# The agent
# ---------------------------------------------------------------------------------------


def layer_init(layer, std=2**0.5, bias=0.0):
    """Orthogonal weights with gain `std` and constant bias (PPO implementation detail #2 of
    Huang et al. 2022: the gains √2 for hidden layers, 0.01 for the policy head so that the
    first policy is near uniform, and 1 for the value head)."""
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, bias)
    return layer


def mlp(in_dim, out_dim, hidden, last_std):
    """Two tanh hidden layers of width `hidden`; the output layer's gain is `last_std`."""
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), last_std),
    )


class Agent(nn.Module):
    """Separate actor and critic MLPs (tanh). Sharing a trunk would couple the two losses."""

    def __init__(self, obs_dim, n_actions, hidden=64):
        super().__init__()
        self.actor = mlp(obs_dim, n_actions, hidden, 0.01)
        self.critic = mlp(obs_dim, 1, hidden, 1.0)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def sample(self, obs):
        """a ~ π_θ(·|s)."""
        return torch.multinomial(self.actor(obs).softmax(-1), 1).squeeze(-1)

    def evaluate(self, obs, action):
        """log π_θ(a|s), the logits and V(s) for given actions (any leading shape)."""
        logits = self.actor(obs)
        logp = F.log_softmax(logits, -1).gather(-1, action[..., None]).squeeze(-1)
        return logp, logits, self.value(obs)


# ---------------------------------------------------------------------------------------
# Environments, logging, checkpoints
# ---------------------------------------------------------------------------------------


def make_envs(env_id, num_envs, action_spaces, video_dir=None):
    """A Gymnasium >= 1.0 vector env with next-step autoreset: the numpy-vectorised version
    when the environment has one (CartPole does), else one copy per env in this process.

    The observation space must be a flat Box, the action space one of `action_spaces`. The
    observations are cast to float32 (the networks' dtype), and a NaN or infinite one is a
    ValueError. With `video_dir`, the envs render rgb_array frames and Gymnasium's RecordVideo
    saves each env's first episode there as MP4. Any failure is one ValueError, and envs made
    so far are closed.
    """
    if video_dir is not None and importlib.util.find_spec("moviepy") is None:
        raise ValueError("--capture-video needs moviepy, an optional extra: pip install moviepy")
    # Gymnasium's warnings (an outdated version, ...) are shown only if the env is made: if
    # not, the one error line says it all.
    try:
        with warnings.catch_warnings(record=True) as caught:
            # copy=False: a per-env (sync) vector env hands back its own buffer instead of a
            # deepcopy (16-32 µs a MuJoCo step, measured); checked() copies anyway.
            no_copy = dict(vector_kwargs=dict(copy=False))
            if video_dir is None:
                vectorised = gym.spec(env_id).vector_entry_point is not None
                envs = gym.make_vec(env_id, num_envs=num_envs, **({} if vectorised else no_copy))
            else:  # one env object per copy, each with its own file name
                names = iter(range(num_envs))
                record = lambda env: gym.wrappers.RecordVideo(  # noqa: E731
                    env, video_dir, lambda episode: episode == 0, name_prefix=f"env{next(names)}"
                )
                envs = gym.make_vec(env_id, num_envs, "sync", **no_copy, wrappers=[record],
                                    render_mode="rgb_array")  # fmt: skip
    except Exception as e:  # gym.error.Error, a missing extra's ModuleNotFoundError, ...
        raise ValueError(f"cannot make --env-id {env_id!r}: {' '.join(str(e).split())}") from None
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    act, obs = envs.single_action_space, envs.single_observation_space
    problem = None
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        problem = f"has observations {obs}; need a flat Box"
    elif not isinstance(act, action_spaces):
        problem = f"has {act}; need {' or '.join(s.__name__ for s in action_spaces)}"
        # Point to the sibling scripts: `trpo.py --env-id Pendulum-v1` is a likely first try.
        if isinstance(act, gym.spaces.Box):
            problem += " (for Box actions: ppo_continuous.py, trpo_continuous.py)"
        elif isinstance(act, gym.spaces.Discrete):
            problem += " (for Discrete actions: ppo_cartpole.py, a2c.py, trpo.py, reinforce.py)"
    elif envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
        problem = "does not autoreset in the next step"
    if problem:
        envs.close()
        raise ValueError(f"--env-id {env_id} {problem}")

    def checked(o):  # a NaN would fail deep inside sampling, float64 meet float32 weights
        if not np.isfinite(o).all():
            raise ValueError(f"--env-id {env_id} returned an observation with NaN or inf")
        return o.astype(np.float32)  # a copy: the vector env reuses its buffer (copy=False)

    box = gym.spaces.Box(-np.inf, np.inf, obs.shape, np.float32)  # no network uses bounds
    return gym.wrappers.vector.TransformObservation(envs, checked, single_observation_space=box)


def evaluate_greedy(policy, envs, seed, device):
    """Returns of the greedy policy a = argmax_a π(a|s), one episode in each env of `envs`
    (taking the first finishers of fewer envs would favour short episodes)."""
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(envs.num_envs), np.ones(envs.num_envs, bool)
    while alive.any():
        with torch.no_grad():
            action = policy(torch.as_tensor(obs, device=device)).argmax(-1)
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
        returns += reward * alive
        alive &= ~(term | trunc)
    return returns


def seed_and_device(seed, cuda):
    """Seed random, numpy and torch; one torch thread (tiny networks: threads cost more than
    they give); the device to train on."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


def run_dir(args, kind):
    """--output-dir, or runs/<env>__<script>__<kind>__<seed>__<time>; created and checked to be
    writable. A directory that already holds files is refused unless --overwrite: a rerun must
    never replace a finished run's checkpoint and episodes."""
    name = f"{args.env_id}__{SCRIPT.removesuffix('.py')}__{kind}__{args.seed}__{int(time.time())}"
    out = args.output_dir or os.path.join("runs", name)
    if os.path.isdir(out) and os.listdir(out) and not args.overwrite:
        raise ValueError(f"--output-dir {out} holds files of an earlier run; name a new "
                         "directory, or pass --overwrite to replace them")  # fmt: skip
    try:
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OSError(f"cannot write to --output-dir {out}: {e.strerror or e}") from None
    return out


class EpisodeLog:
    """Every finished training episode as (global_step, return), and the solved rule: the
    first step at which the mean return of the last 20 finished episodes reaches `threshold`
    (475 on CartPole; the continuous scripts pass their environment's; None: never)."""

    def __init__(self, writer, threshold=475.0):
        self.writer, self.episodes, self.recent = writer, [], deque(maxlen=20)
        self.threshold, self.solved_at_step, self.solved_at_s = threshold, None, None
        self.t0 = time.time()

    def add(self, step, ret):
        self.episodes.append((step, ret))
        self.recent.append(ret)
        self.writer.add_scalar("charts/episodic_return", ret, step)
        if (self.solved_at_step is None and self.threshold is not None
                and len(self.recent) == 20 and np.mean(self.recent) >= self.threshold):  # fmt: skip
            self.solved_at_step, self.solved_at_s = step, round(time.time() - self.t0, 2)
            print(f"solved at step {step} after {self.solved_at_s:.1f}s")

    def mean(self):
        return float(np.mean(self.recent)) if self.recent else None

    def save_csv(self, path):
        """episodes.csv, written atomically."""
        header = "global_step,episodic_return"
        write = lambda rows, f: np.savetxt(f, rows, "%g", ",", header=header, comments="")  # noqa: E731
        save_atomic(np.array(self.episodes).reshape(-1, 2), path, write)


def check_finite(numbers, module, iteration, hint):
    """FloatingPointError if a loss or a parameter is NaN or infinite, or a parameter lies
    beyond ±1e20: no training gets there without diverging, and a little further on the
    forward pass overflows float32 (3.4e38), so that sampling would fail on a NaN. Called
    once per iteration, not once per minibatch: a NaN anywhere ends up in the mean losses or
    weights."""
    params = torch.cat([p.detach().flatten() for p in module.parameters()])
    if not (np.isfinite(numbers).all() and params.abs().max() <= 1e20):  # False for a NaN
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}; the checkpoint keeps the parameters of "
            f"the iteration before; try a lower {hint}"
        )


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM while the final files are written, then act on them: an
    interrupt inside torch.save would leave a temporary file and no checkpoint at all."""
    caught = []
    held = {
        s: signal.signal(s, lambda *_: caught.append(1)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def save_checkpoint(path, state, args, **extra):
    """The agent's weights with the script, the env id and every arg, written atomically."""
    args = dataclasses.asdict(args)
    save_atomic(dict(script=SCRIPT, env_id=args["env_id"], agent=state, args=args, **extra), path)


def load_checkpoint(path, script, env_id):
    """The checkpoint that `script` saved for `env_id` at `path`. A missing, corrupt or
    truncated file, or one made by another script or for another env, is a ValueError."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # no file, a truncated zip, not a torch file at all, ...
        why = " ".join(str(e).split())[:200]
        raise ValueError(
            f"cannot read --eval-checkpoint {path} (missing or corrupt?): {why}"
        ) from None
    made_by = ckpt.get("script") if isinstance(ckpt, dict) else None
    if made_by != script:
        raise ValueError(f"--eval-checkpoint {path} was made by {made_by or 'another program'}, "
                         f"not by {script}")  # fmt: skip
    if ckpt.get("env_id") != env_id:
        raise ValueError(f"--eval-checkpoint {path} is an agent for {ckpt.get('env_id')}, not "
                         f"for --env-id {env_id}")  # fmt: skip
    return ckpt


def evaluate_checkpoint(args):
    """--eval-checkpoint: rebuild the saved agent from its saved args, play --eval-episodes
    greedy episodes (seed --seed + 10000) without training, return the summary."""
    ckpt = load_checkpoint(args.eval_checkpoint, SCRIPT, args.env_id)
    device = seed_and_device(args.seed, args.cuda)
    video_dir = os.path.join(run_dir(args, "eval"), "videos") if args.capture_video else None
    envs = make_envs(args.env_id, args.eval_episodes, (gym.spaces.Discrete,), video_dir)
    space = envs.single_observation_space.shape[0], envs.single_action_space.n
    try:
        agent = Agent(*space, ckpt["args"]["hidden_size"]).to(device)
        agent.load_state_dict(ckpt["agent"])
    except (KeyError, RuntimeError) as e:  # e.g. another observation size
        envs.close()
        why = " ".join(str(e).split())[:200]
        raise ValueError(f"--eval-checkpoint {args.eval_checkpoint} does not fit: {why}") from None
    returns = evaluate_greedy(agent.actor, envs, args.seed + 10_000, device)
    envs.close()
    print(f"greedy returns: {' '.join(f'{r:g}' for r in returns)}")
    summary = dict(script=SCRIPT, env_id=args.env_id, checkpoint=args.eval_checkpoint,
                   eval_episodes=len(returns), eval_mean_return=float(np.mean(returns)),
                   eval_std_return=float(np.std(returns)), videos=video_dir)  # fmt: skip
    return summary


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def collect_episodes(envs, policy, device, seed=None):
    """Play exactly one episode in every env, from a fresh reset, with the current policy.

    One episode per env makes the batch an i.i.d. sample of episodes (keeping every episode
    that ends before some deadline would favour short ones), and every episode is complete
    and on-policy. An env whose episode is over is still stepped by the vector env, but
    nothing it returns is kept: its autoreset step and next episode never enter the batch,
    so the autoreset mode does not matter here. Returns [T, N] tensors (obs: [T, N, obs_dim]);
    `alive` marks the steps that belong to an episode; `truncated` the last steps of episodes cut
    by the time limit that did not also terminate.
    """
    obs, _ = envs.reset(seed=seed)
    alive = np.ones(envs.num_envs, dtype=bool)
    steps = []
    while alive.any():
        logits = policy(torch.as_tensor(obs, device=device))
        action = Categorical(logits=logits).sample().cpu().numpy()
        next_obs, reward, terminated, truncated, _ = envs.step(action)
        end = terminated | truncated
        # Cut by the time limit only: the pole can fall on the limit's step, and Gymnasium
        # then reports terminated and truncated together. That is a real terminal state.
        cut = truncated & ~terminated
        steps.append((obs, action, reward * alive, end & alive, cut & alive, next_obs, alive))
        alive = alive & ~end
        obs = next_obs
    keys = ("obs", "actions", "rewards", "ends", "truncated", "final_obs", "alive")
    columns = zip(*steps, strict=True)
    batch = {
        k: torch.as_tensor(np.stack(v), device=device) for k, v in zip(keys, columns, strict=True)
    }
    batch["rewards"] = batch["rewards"].float()
    return batch


def episode_returns(batch, critic, gamma):
    """G_t of every live step of a collect_episodes batch, flattened in [T, N] order. With a
    critic, an episode cut by the time limit (and not terminated) adds γ^k V(s_final)."""
    # CartPole stops at 500 steps by truncation, not failure. Pure Monte Carlo counts the
    # missing tail as 0, which tells the policy that the last actions of a perfect episode
    # were bad, and gives V a target that depends on the time step, which V cannot see. With
    # the value baseline we add γ^k V(s_final) instead, V as fitted before this batch: the one
    # place V enters G_t itself (a bootstrap, so G_t is then biased by V's error there).
    # Without V the cut is treated as an ending, as in the textbook.
    bootstrap = torch.zeros_like(batch["rewards"])
    cut = batch["truncated"]
    if critic is not None and cut.any():
        with torch.no_grad():
            bootstrap[cut] = critic(batch["final_obs"][cut]).squeeze(-1)
    return reward_to_go(batch["rewards"], batch["ends"], bootstrap, gamma)[batch["alive"]]


def reinforce_update(agent, optimizer, obs, actions, returns, args, iteration):
    """One gradient step on L = −mean_t log π(a_t|s_t) Â_t − c_ent S (+ L_V with --baseline
    value) over all live steps of the batch. Returns the statistics to log."""
    values = agent.value(obs) if args.baseline == "value" else None
    adv = advantage_estimate(returns, values, args.baseline, args.normalize_advantages)
    dist = Categorical(logits=agent.actor(obs))
    entropy = dist.entropy().mean()
    pg_loss = reinforce_loss(dist.log_prob(actions), adv)
    v_loss = value_regression_loss(values, returns) if values is not None else torch.zeros(())
    loss = pg_loss - args.ent_coef * entropy + v_loss
    optimizer.zero_grad()
    loss.backward()
    # Clip each network on its own: V's squared error on returns of order 1/(1−γ) has a far
    # larger gradient than the policy's, and would dominate a joint norm.
    grad_norm = torch.zeros(())
    if args.max_grad_norm > 0:
        grad_norm = nn.utils.clip_grad_norm_(agent.actor.parameters(), args.max_grad_norm)
        nn.utils.clip_grad_norm_(agent.critic.parameters(), args.max_grad_norm)
    optimizer.step()
    stats = dict(policy_loss=pg_loss.item(), value_loss=v_loss.item(), entropy=entropy.item())
    check_finite(list(stats.values()), agent, iteration, "--learning-rate or --value-learning-rate")
    return stats | dict(policy_grad_norm=float(grad_norm))


def train(args):
    check_args(args)
    if args.eval_checkpoint:
        return evaluate_checkpoint(args)
    start = time.time()
    device = seed_and_device(args.seed, args.cuda)
    envs = make_envs(args.env_id, args.num_envs, (gym.spaces.Discrete,))
    space = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(*space, args.hidden_size).to(device)
    optimizer = torch.optim.Adam(
        [
            {"params": agent.actor.parameters(), "lr": args.learning_rate},
            {"params": agent.critic.parameters(), "lr": args.value_learning_rate},
        ]
    )
    out = run_dir(args, "train")  # made only once the envs exist: bad input leaves nothing
    # A full disk fails the writer's thread, which would print its own traceback; the writer
    # raises the same OSError here at its next call, which main() reports in one line.
    threading.excepthook = lambda a: (
        None if isinstance(a.exc_value, OSError) else threading.__excepthook__(a)
    )
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))
    log = EpisodeLog(writer)
    global_step, iteration, simulated, trained = 0, 0, 0, False
    critic = agent.critic if args.baseline == "value" and args.bootstrap_truncated else None
    print(f"reinforce on {args.env_id}: {device}, output in {out}", flush=True)
    try:
        while global_step < args.total_timesteps:
            iteration += 1
            seed = args.seed if iteration == 1 else None
            batch = collect_episodes(envs, agent.actor, device, seed)
            # Episodes in finishing order; global_step counts live transitions only, i.e.
            # exactly the steps a one-env implementation would take for the same episodes.
            live_per_step = batch["alive"].sum(1).cpu().numpy()
            ep_return = batch["rewards"].sum(0).cpu().numpy()
            for t, env_idx in batch["ends"].nonzero().cpu().numpy():
                log.add(global_step + int(live_per_step[: t + 1].sum()), float(ep_return[env_idx]))
            global_step += int(live_per_step.sum())
            simulated += batch["alive"].numel()  # including the idle steps of envs already done

            returns = episode_returns(batch, critic, args.gamma)
            obs, actions = batch["obs"][batch["alive"]], batch["actions"][batch["alive"]]
            stats = reinforce_update(agent, optimizer, obs, actions, returns, args, iteration)

            save_checkpoint(os.path.join(out, "checkpoint.pt"), agent.state_dict(), args,
                            optimizer=optimizer.state_dict(), iteration=iteration)  # fmt: skip
            trained = True
            stats.update(episodes_per_update=int(batch["ends"].sum()))
            for tag, val in stats.items():
                writer.add_scalar(f"losses/{tag}", val, global_step)
            sps = int(global_step / (time.time() - log.t0))
            writer.add_scalar("charts/SPS", sps, global_step)
            if iteration % 10 == 0:
                print(
                    f"iter {iteration:4d}  step {global_step:7d}  return(last 20) "
                    f"{np.mean(log.recent):6.1f}  entropy {stats['entropy']:.3f}  {sps} steps/s",
                    flush=True,
                )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C or SIGTERM alike; a second
        # interrupt waits until the file is complete. Before its first checkpoint, a run
        # leaves an earlier run's episodes (--overwrite) as they are.
        with signals_held():
            if trained or not os.path.exists(os.path.join(out, "episodes.csv")):
                log.save_csv(os.path.join(out, "episodes.csv"))
            envs.close()

    eval_returns = None
    if args.eval_episodes:
        video_dir = os.path.join(out, "videos") if args.capture_video else None
        envs = make_envs(args.env_id, args.eval_episodes, (gym.spaces.Discrete,), video_dir)
        eval_returns = evaluate_greedy(agent.actor, envs, args.seed + 10_000, device)
        envs.close()
        writer.add_scalar("charts/eval_mean_return", np.mean(eval_returns), global_step)
    writer.close()
    return {
        "algo": "reinforce",
        "env_id": args.env_id,
        "seed": args.seed,
        "global_step": global_step,
        "solved_at_step": log.solved_at_step,
        "solved_at_s": log.solved_at_s,
        "final_mean_return": log.mean(),
        "eval_mean_return": None if eval_returns is None else float(np.mean(eval_returns)),
        "wall_time_s": round(time.time() - start, 2),
        "env_steps_simulated": simulated,
        "output_dir": out,
    }


def save_atomic(obj, path, write=torch.save):
    """write(obj, path + ".tmp"), then rename it over `path`: a reader finds the old file or the
    complete new one, never half of one. A failed write (a full disk, a read-only directory)
    removes the temporary file, keeps the old one, and is an OSError that names `path`."""
    tmp = path + ".tmp"
    try:
        write(obj, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError | RuntimeError):  # torch.save reports ENOSPC as RuntimeError
            raise OSError(f"cannot write {path}: {' '.join(str(e).split())[:200]}") from None
        raise


def main(argv=None):
    """Run train(), print its summary as the last stdout line. Bad input, a failed save and an
    interrupt each end with one line on stderr and a non-zero exit."""
    # SIGTERM (sent by `timeout`, job schedulers, `docker stop`) becomes the KeyboardInterrupt
    # of a Ctrl-C, so the same finally-blocks save the last good state before exiting.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("error: interrupted; files saved before the interrupt are kept", file=sys.stderr)
        sys.exit(130)
    # NaN and inf are not JSON: a summary line must stay parseable whatever the run produced.
    summary = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in summary.items()}  # fmt: skip
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
