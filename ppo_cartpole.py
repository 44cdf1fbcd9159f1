"""PPO-clip (and PPO-penalty) on CartPole-v1, in one file.

Proximal Policy Optimization, Schulman et al. 2017 (https://arxiv.org/abs/1707.06347), with
generalized advantage estimation, Schulman et al. 2015 (https://arxiv.org/abs/1506.02438).

    python ppo_cartpole.py                          # PPO-clip; solves CartPole-v1
    python ppo_cartpole.py --loss-type kl_penalty   # PPO with the adaptive KL penalty
    python ppo_cartpole.py --help
"""

import argparse
import contextlib
import copy
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
    from torch.utils.tensorboard import SummaryWriter
except KeyboardInterrupt:
    sys.exit("error: interrupted while starting up; nothing was written")

SCRIPT = "ppo_cartpole.py"  # recorded in checkpoints, checked when one is loaded


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
    total_timesteps: int = flag(100_000, "environment steps to train for, over all envs")
    learning_rate: float = flag(5e-3, "Adam step size at the start (see --anneal-lr)")
    anneal_lr: bool = flag(True, "decay the learning rate linearly to 0 over training")
    num_envs: int = flag(8, "parallel environments")
    num_steps: int = flag(32, "steps per environment per rollout")
    gamma: float = flag(0.98, "discount factor γ")
    gae_lambda: float = flag(0.8, "GAE λ: 0 is one-step TD, 1 is Monte Carlo")
    num_minibatches: int = flag(1, "minibatches per epoch; must divide num_envs * num_steps")
    update_epochs: int = flag(10, "passes over each rollout")
    norm_adv: bool = flag(True, "normalise the advantages within each minibatch")
    loss_type: str = flag("clip", "policy objective: clip (L^CLIP) or kl_penalty")
    clip_coef: float = flag(0.2, "ε of the clipped surrogate")
    clip_vloss: bool = flag(False, "clip the value loss with the same ε, as in PPO2")
    ent_coef: float = flag(0.0, "c2: weight of the entropy bonus")
    vf_coef: float = flag(0.5, "c1: weight of the value loss")
    max_grad_norm: float = flag(0.5, "clip the global gradient norm to this")
    target_kl: float = flag(0.02, "stop the epochs early once approx KL exceeds this; 0 = off")
    kl_beta: float = flag(1.0, "kl_penalty: initial β")
    kl_target: float = flag(0.01, "kl_penalty: d_targ that the adaptive β aims at")
    hidden_size: int = flag(64, "width of the two hidden layers of actor and critic")
    eval_episodes: int = flag(0, "after training, evaluate the greedy policy on N episodes")
    eval_checkpoint: str = flag("", "evaluate this saved agent.pt on --eval-episodes; no training")
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
    counts = ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs")
    check_flags(args, positive=(*counts, "hidden_size", "learning_rate", "max_grad_norm",
                                "kl_beta", "kl_target"),
                nonneg=("seed", "clip_coef", "ent_coef", "vf_coef", "target_kl", "eval_episodes"),
                unit=("gamma", "gae_lambda"))  # fmt: skip
    # numpy's seeds are 32-bit; the optimizer's first step, ~10 lr, must fit in a float32; one
    # environment object per env or evaluation episode; more epochs make a run never end.
    most = dict(seed=2**32 - 1, learning_rate=1e37, num_envs=10_000, eval_episodes=10_000,
                update_epochs=1000)  # fmt: skip
    for name, bound in most.items():
        if getattr(args, name) > bound:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {bound}, not "
                             f"{getattr(args, name)}")  # fmt: skip
    # The rollout buffers and the networks, at ~1 KiB per stored step (observations of up
    # to ~250 floats) and 3 weight copies (weights, Adam's two moments) of the two MLPs.
    check_memory(1024 * args.num_envs * args.num_steps + 4 * 3 * 2 * 2 * args.hidden_size**2,
                 "--num-envs x --num-steps and --hidden-size")  # fmt: skip
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        raise ValueError(
            f"the batch of num_envs*num_steps={args.num_envs * args.num_steps} does not split "
            f"into --num-minibatches {args.num_minibatches} equal parts"
        )
    if args.loss_type not in ("clip", "kl_penalty"):
        raise ValueError(f"--loss-type must be clip or kl_penalty, not {args.loss_type!r}")
    if args.eval_checkpoint and args.eval_episodes == 0:
        raise ValueError("--eval-episodes must be > 0 with --eval-checkpoint")


# ---------------------------------------------------------------------------------------
# The math. Everything below is a pure function of tensors, so tests can check it alone.
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
    # δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t), every t at once: only a real
    # terminal state has value 0; a time-limit cut keeps the bootstrap.
    delta = rewards + gamma * values[1:] * (1 - terminated) - values[:-1]
    decay = gamma * lam * (1 - dones)
    advantages = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        # Â_t = δ_t + γλ (1 − done_t) Â_{t+1}: advantages never leak across episodes.
        next_adv = delta[t] + decay[t] * next_adv
        advantages[t] = next_adv
    return advantages


def clipped_surrogate_loss(logp, logp_old, adv, clip_coef):
    """−L^CLIP, the loss to minimise, and the fraction of samples whose ratio was clipped.

    r_t(θ) = π_θ(a_t|s_t) / π_θold(a_t|s_t) = exp(log π_θ − log π_θold)
    L^CLIP(θ) = E_t[min(r_t Â_t, clip(r_t, 1 − ε, 1 + ε) Â_t)]
    """
    # r_t(θ) = π_θ(a_t|s_t) / π_θold(a_t|s_t), computed in log space for stability.
    ratio = (logp - logp_old).exp()
    # L^CLIP = E[min(r Â, clip(r, 1−ε, 1+ε) Â)]: the min makes this a pessimistic bound, so
    # moving r beyond 1±ε in the direction Â favours earns nothing (zero gradient there).
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - clip_coef, 1 + clip_coef) * adv)
    clipfrac = ((ratio - 1).abs() > clip_coef).float().mean()
    return -surrogate.mean(), clipfrac


def kl_penalty_loss(logp, logp_old, adv, beta):
    """−L^KLPEN, PPO's adaptive-penalty objective (PPO paper, section 4), as a loss.

    L^KLPEN(θ) = E_t[r_t Â_t − β KL[π_θold(·|s_t), π_θ(·|s_t)]]
    The KL is the k3 estimate on the sampled actions (see approx_kl), whose gradient is an
    unbiased estimate of ∇KL(π_old ‖ π_θ) too: E_old[(r − 1) ∇log π_θ] = ∇KL.
    """
    ratio = (logp - logp_old).exp()
    return -(ratio * adv).mean() + beta * approx_kl(logp, logp_old)


def approx_kl(logp, logp_old):
    """k3 estimator of KL(π_old ‖ π_θ) from actions sampled under π_old (Schulman, 2020).

    With log r = log π_θ − log π_old:  k3 = (r − 1) − log r.
    Unbiased (E_old[r] = 1), never negative (log r ≤ r − 1), and low-variance.
    """
    log_ratio = logp - logp_old
    return ((log_ratio.exp() - 1) - log_ratio).mean()


def adapt_kl_beta(beta, kl, kl_target):
    """The adaptive penalty coefficient of the PPO paper, applied after each update.

    β ← β / 2 if d < d_targ / 1.5;   β ← 2 β if d > 1.5 d_targ;   else unchanged.
    """
    if kl < kl_target / 1.5:
        return beta / 2
    if kl > kl_target * 1.5:
        return beta * 2
    return beta


def value_loss(values, values_old, returns, clip_coef):
    """L^VF, the critic's regression loss, optionally clipped (clip_coef > 0), halved.

    L^VF = ½ (V_φ(s_t) − V_t^targ)²
    clipped: ½ max((V − V^targ)², (V_old + clip(V − V_old, −ε, ε) − V^targ)²)
    Clipping (from OpenAI's PPO2 code, not the paper) keeps the critic near its rollout-time
    values; Engstrom et al. 2020 found it does not help, so it is off by default.
    """
    loss = (values - returns) ** 2
    if clip_coef > 0:
        clipped = values_old + (values - values_old).clamp(-clip_coef, clip_coef)
        loss = torch.max(loss, (clipped - returns) ** 2)
    return 0.5 * loss.mean()


def categorical_entropy(logits):
    """S[π_θ](s) = −Σ_a π(a|s) log π(a|s), averaged over the batch."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def explained_variance(pred, target):
    """1 − Var[target − pred] / Var[target]: 1 is a perfect critic, ≤ 0 is no better than a
    constant. NaN when the targets do not vary."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


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


def log_rollout_episodes(log, ep_return, rewards, dones, global_step):
    """Add the episodes that end inside a [T, N] rollout to `log`, in time order. ep_return
    carries each env's running return across rollouts. global_step counts every vector-env
    step (N per row, autoreset steps included); returns its new value."""
    for reward, done in zip(rewards.cpu().numpy(), dones.cpu().numpy().astype(bool), strict=True):
        global_step += len(reward)
        ep_return += reward
        for ret in ep_return[done]:
            log.add(global_step, ret)
        ep_return[done] = 0
    return global_step


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


def rollout(agent, envs, obs, prev_done, num_steps, device):
    """Collect num_steps steps in each env under the current policy π_θold.

    Returns (batch, obs, prev_done). The batch holds [T, N] tensors; "obs" and "value" have
    T + 1 rows, the last being the observation after the final step and V of it. prev_done
    says which envs ended an episode in their last step and so will reset in their next.
    """
    T, N = num_steps, envs.num_envs
    obs_buf = np.zeros((T + 1, *obs.shape), np.float32)
    reward, terminated, done, valid = (np.zeros((T, N), np.float32) for _ in range(4))
    action = torch.zeros((T, N), dtype=torch.long, device=device)
    for t in range(T):
        obs_buf[t] = obs
        # Gymnasium >= 1.0 autoresets in the *next* step: the step after an episode's end
        # ignores the action, returns reward 0 and the new episode's first observation. It
        # is not a transition of the MDP, so it is marked invalid and gets no loss.
        valid[t] = ~prev_done
        with torch.no_grad():
            action[t] = agent.sample(torch.as_tensor(obs, device=device))
        obs, reward[t], terminated[t], truncated, _ = envs.step(action[t].cpu().numpy())
        prev_done = terminated[t].astype(bool) | truncated
        done[t] = prev_done
    obs_buf[T] = obs
    # log π_θold and V for the whole rollout in one batched pass, which is cheaper than one
    # per step. After a truncation the next row holds the final observation, so V of it is
    # the bootstrap value that gae() needs (truncation is not termination).
    obs_all = torch.as_tensor(obs_buf, device=device)
    with torch.no_grad():
        logp = agent.evaluate(obs_all[:-1], action)[0]
        value = agent.value(obs_all)
    arrays = dict(reward=reward, terminated=terminated, done=done, valid=valid > 0)
    batch = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    batch.update(obs=obs_all, action=action, logp=logp, value=value)
    return batch, obs, prev_done


def valid_transitions(b, adv):
    """The rollout's real transitions (autoreset steps dropped) as flat tensors, with Â and
    the λ-return V^targ = Â + V(s), the critic's regression target."""
    keep = b["valid"].flatten()
    flat = dict(obs=b["obs"][:-1], action=b["action"], logp=b["logp"], adv=adv,
                ret=adv + b["value"][:-1], value=b["value"][:-1])  # fmt: skip
    return {k: v.flatten(0, 1)[keep] for k, v in flat.items()}


def ppo_epochs(agent, optimizer, t, args, beta, entropy):
    """--update-epochs passes of shuffled minibatches over the transitions `t`, each step
    minimising L = −L^CLIP (or −L^KLPEN) + c1 L^VF − c2 S. `entropy` maps the distribution
    parameters that agent.evaluate returns (the logits, or log σ) to S, the batch's mean
    entropy. Returns the mean losses."""
    stats = []
    for _epoch in range(args.update_epochs):
        perm = torch.randperm(len(t["obs"]), device=t["obs"].device)
        for mb in torch.tensor_split(perm, args.num_minibatches):
            logp, dist, v = agent.evaluate(t["obs"][mb], t["action"][mb])
            mb_adv = t["adv"][mb]
            if args.norm_adv and len(mb) > 1:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            if args.loss_type == "clip":
                pg_loss, clipfrac = clipped_surrogate_loss(
                    logp, t["logp"][mb], mb_adv, args.clip_coef
                )
            else:  # nothing is clipped in this objective
                pg_loss = kl_penalty_loss(logp, t["logp"][mb], mb_adv, beta)
                clipfrac = torch.zeros((), device=logp.device)
            v_clip = args.clip_coef if args.clip_vloss else 0.0
            v_loss = value_loss(v, t["value"][mb], t["ret"][mb], v_clip)
            entropy_mean = entropy(dist)
            # L = L^CLIP − c1 L^VF + c2 S is maximised; we minimise its negative.
            loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy_mean
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            # foreach: the norms in one call, not one per tensor (same result, bit for bit)
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm, foreach=True)
            optimizer.step()
            with torch.no_grad():
                kl = approx_kl(logp, t["logp"][mb])
            stats.append(torch.stack([pg_loss, v_loss, entropy_mean, kl, clipfrac]))
        if args.target_kl > 0 and kl > args.target_kl:
            break  # early stop: the policy has moved far enough from π_θold
    return dict(zip(("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac"),
                    torch.stack(stats).mean(0).tolist(), strict=True))  # fmt: skip


def train(args):
    check_args(args)
    if args.eval_checkpoint:
        return evaluate_checkpoint(args)
    start = time.time()
    device = seed_and_device(args.seed, args.cuda)
    envs = make_envs(args.env_id, args.num_envs, (gym.spaces.Discrete,))
    space = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(*space, args.hidden_size).to(device)
    # eps=1e-5 rather than 1e-8, as in OpenAI baselines' PPO.
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    out = run_dir(args, "train")  # made only once the envs exist: bad input leaves nothing
    # A full disk fails the writer's thread, which would print its own traceback; the writer
    # raises the same OSError here at its next call, which main() reports in one line.
    threading.excepthook = lambda a: (
        None if isinstance(a.exc_value, OSError) else threading.__excepthook__(a)
    )
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))

    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    obs, _ = envs.reset(seed=args.seed)
    prev_done, ep_return = np.zeros(args.num_envs, bool), np.zeros(args.num_envs)
    global_step, beta = 0, args.kl_beta
    last_good, trained = copy.deepcopy(agent.state_dict()), False
    log = EpisodeLog(writer)
    print(f"training {args.env_id} for {args.total_timesteps} steps; logs in {out}")
    try:
        for iteration in range(1, num_iterations + 1):
            frac = 1.0 - (iteration - 1) / num_iterations
            lr = frac * args.learning_rate if args.anneal_lr else args.learning_rate
            optimizer.param_groups[0]["lr"] = lr

            b, obs, prev_done = rollout(agent, envs, obs, prev_done, args.num_steps, device)
            global_step = log_rollout_episodes(log, ep_return, b["reward"], b["done"], global_step)
            adv = gae(
                b["reward"], b["value"], b["terminated"], b["done"], args.gamma, args.gae_lambda
            )
            t = valid_transitions(b, adv)
            stats = ppo_epochs(agent, optimizer, t, args, beta, categorical_entropy)

            check_finite(list(stats.values())[:3], agent, iteration, "--learning-rate")
            last_good, trained = copy.deepcopy(agent.state_dict()), True
            if args.loss_type == "kl_penalty":
                with torch.no_grad():
                    d = approx_kl(agent.evaluate(t["obs"], t["action"])[0], t["logp"]).item()
                beta = adapt_kl_beta(beta, d, args.kl_target)
                stats.update(kl_beta=beta, kl_after_update=d)
            stats["explained_variance"] = explained_variance(t["value"], t["ret"])
            for name, value in stats.items():
                writer.add_scalar(f"losses/{name}", value, global_step)
            sps = int(global_step / (time.time() - log.t0))
            writer.add_scalar("charts/learning_rate", lr, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            if iteration % max(1, num_iterations // 10) == 0:
                print(
                    f"[{100 * iteration // num_iterations:3d}%] step {global_step} mean_return"
                    f"(last 20)={np.mean(log.recent or [np.nan]):.1f} "
                    f"approx_kl={stats['approx_kl']:.4f} SPS={sps}"
                )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C or SIGTERM alike; a second
        # interrupt waits until these files are complete. Before its first iteration ends, a
        # run leaves an earlier run's files (--overwrite) as they are: untrained is no better.
        with signals_held():
            if trained or not os.path.exists(os.path.join(out, "agent.pt")):
                save_checkpoint(os.path.join(out, "agent.pt"), last_good, args)
                log.save_csv(os.path.join(out, "episodes.csv"))
            envs.close()
            writer.close()

    eval_returns = None
    if args.eval_episodes > 0:
        video_dir = os.path.join(out, "videos") if args.capture_video else None
        envs = make_envs(args.env_id, args.eval_episodes, (gym.spaces.Discrete,), video_dir)
        eval_returns = evaluate_greedy(agent.actor, envs, args.seed + 10_000, device)
        envs.close()
        print(f"eval: greedy returns over {args.eval_episodes} episodes: {eval_returns}")
    return {
        "algo": "ppo_" + args.loss_type,
        "env_id": args.env_id,
        "seed": args.seed,
        "global_step": global_step,
        "solved_at_step": log.solved_at_step,
        "solved_at_s": log.solved_at_s,
        "final_mean_return": log.mean(),
        "eval_mean_return": None if eval_returns is None else float(np.mean(eval_returns)),
        "wall_time_s": round(time.time() - start, 2),
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
