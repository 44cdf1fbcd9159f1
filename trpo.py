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
    from torch.nn.utils import parameters_to_vector, vector_to_parameters
    from torch.utils.tensorboard import SummaryWriter
except KeyboardInterrupt:
    sys.exit("error: interrupted while starting up; nothing was written")

SCRIPT = "trpo.py"  # recorded in checkpoints, checked when one is loaded


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
    eval_checkpoint: str = flag("", "evaluate this saved trpo.pt on --eval-episodes; no training")
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
    counts = ("total_timesteps", "num_envs", "num_steps", "cg_iters", "line_search_steps",
              "critic_epochs", "critic_minibatch_size", "hidden_size")  # fmt: skip
    check_flags(args, positive=(*counts, "learning_rate", "max_kl"),
                nonneg=("seed", "cg_damping", "cg_tol", "eval_episodes"),
                unit=("gamma", "gae_lambda"))  # fmt: skip
    if args.cg_tol >= 1:  # |r_0| = |g| <= cg_tol·|g|: no CG iteration, so never a step
        raise ValueError(f"--cg-tol must be below 1, not {args.cg_tol}: TRPO would never step")
    # numpy's seeds are 32-bit; the optimizer's first step, ~10 lr, must fit in a float32; one
    # environment object per env or evaluation episode; more CG iterations, halvings of the
    # step (100 move no float32 weight) or critic epochs make a run never end.
    most = dict(seed=2**32 - 1, learning_rate=1e37, num_envs=10_000, eval_episodes=10_000,
                cg_iters=1000, line_search_steps=100, critic_epochs=1000)  # fmt: skip
    for name, bound in most.items():
        if getattr(args, name) > bound:
            raise ValueError(f"--{name.replace('_', '-')} must be at most {bound}, not "
                             f"{getattr(args, name)}")  # fmt: skip
    # The rollout buffers and the networks, at ~1 KiB per stored step (observations of up
    # to ~250 floats) and 3 weight copies (weights, Adam's two moments) of the two MLPs.
    check_memory(1024 * args.num_envs * args.num_steps + 4 * 3 * 2 * 2 * args.hidden_size**2,
                 "--num-envs x --num-steps and --hidden-size")  # fmt: skip
    if args.eval_checkpoint and args.eval_episodes == 0:
        raise ValueError("--eval-episodes must be > 0 with --eval-checkpoint")


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


def natural_step(params, fvp, evaluate, max_kl, cg_iters, cg_tol, ls_steps):
    """The step of TRPO (§6 and appendix C) for any policy, in place on `params`:

    maximise_θ  L(θ) = E[π_θ(a|s) / π_θold(a|s) · Â]
    subject to  KL̄(θ) = E_s[KL(π_θold(·|s) ‖ π_θ(·|s))] <= δ

    With L linearised (gradient g) and KL̄ expanded to second order (Fisher F) at θ_old, the
    solution is θ_old + β s with F s = g (conjugate gradient) and β = sqrt(2δ / sᵀF s), the
    step that puts the quadratic model exactly on the boundary: ½ (βs)ᵀF(βs) = δ. The models
    are only local, so a backtracking line search tries β s, β s/2, β s/4, ... (at most
    `ls_steps` candidates) and accepts the first with the real KL̄ <= δ and the real L above
    L(θ_old); if none passes, θ_old is kept.

    `fvp` is v ↦ (F + λI) v and `evaluate()` gives (KL̄, L) at the current parameters.
    Returns statistics for the logs.
    """
    surr_old = evaluate()[1]
    # g = ∇_θ L(θ) at θ_old
    g = parameters_to_vector(torch.autograd.grad(surr_old, params))
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
            kl, surr = evaluate()
            improvement = (surr - surr_old).item()
            # the linear model's prediction of the improvement: gᵀ step
            expected = (g @ step).item()
            stats.update(kl=kl, improvement=improvement, expected_improvement=expected)
            stats["line_search_steps"] = k + 1
            if kl <= max_kl and improvement > 0:
                stats["accepted"] = 1.0
                return stats
        vector_to_parameters(theta_old, params)
    return stats


def trpo_step(policy, obs, action, adv, max_kl, cg_iters, cg_damping, cg_tol, ls_steps):
    """One TRPO update of the categorical `policy`, in place, on one batch: natural_step()
    with π_θ(a|s) = softmax(logits_θ(s))_a and the exact categorical KL."""
    with torch.no_grad():
        old_logits = policy(obs)
        logp_old = F.log_softmax(old_logits, -1).gather(-1, action[:, None]).squeeze(-1)

    def evaluate():  # (KL̄, L) at the current θ
        logits = policy(obs)
        kl = categorical_kl(old_logits, logits).mean().item()
        return kl, surrogate_advantage(logits, action, logp_old, adv)

    fvp = fisher_vector_product(policy, obs, cg_damping)
    params = list(policy.parameters())
    return natural_step(params, fvp, evaluate, max_kl, cg_iters, cg_tol, ls_steps)


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


def train(args):
    check_args(args)
    if args.eval_checkpoint:
        return evaluate_checkpoint(args)
    start = time.time()
    device = seed_and_device(args.seed, args.cuda)
    envs = make_envs(args.env_id, args.num_envs, (gym.spaces.Discrete,))
    space = envs.single_observation_space.shape[0], envs.single_action_space.n
    agent = Agent(*space, args.hidden_size).to(device)
    # Only the critic has an optimizer: the policy moves by the TRPO step alone.
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.learning_rate)
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
    global_step = 0
    last_good, trained = copy.deepcopy(agent.state_dict()), False
    log = EpisodeLog(writer)
    print(f"training {args.env_id} for {args.total_timesteps} steps; logs in {out}")
    try:
        for iteration in range(1, num_iterations + 1):
            b, obs, prev_done = rollout(agent, envs, obs, prev_done, args.num_steps, device)
            global_step = log_rollout_episodes(log, ep_return, b["reward"], b["done"], global_step)
            adv = gae(
                b["reward"], b["value"], b["terminated"], b["done"], args.gamma, args.gae_lambda
            )
            t = valid_transitions(b, adv)
            # Normalised Â. Its scale cannot change the step (s ∝ g and β ∝ 1/|g|, so δ alone
            # sets the length); subtracting the mean is one more baseline, against variance.
            t_adv = (t["adv"] - t["adv"].mean()) / (t["adv"].std() + 1e-8)
            stats = trpo_step(
                agent.actor, t["obs"], t["action"], t_adv, args.max_kl, args.cg_iters,
                args.cg_damping, args.cg_tol, args.line_search_steps,
            )  # fmt: skip
            stats["value_loss"] = fit_critic(
                agent.critic, optimizer, t["obs"], t["ret"], args.critic_epochs,
                args.critic_minibatch_size,
            )  # fmt: skip

            check_finite(list(stats.values()), agent, iteration, "--learning-rate or --max-kl")
            last_good, trained = copy.deepcopy(agent.state_dict()), True
            sps = int(global_step / (time.time() - log.t0))
            for name, value in stats.items():
                writer.add_scalar(f"trpo/{name}", value, global_step)
            writer.add_scalar("charts/SPS", sps, global_step)
            print(
                f"iter {iteration:3d} step {global_step:6d} mean_return(last 20)="
                f"{np.mean(log.recent or [np.nan]):5.1f} kl={stats['kl']:.4f} "
                f"improvement={stats['improvement']:+.4f} "
                f"(expected {stats['expected_improvement']:+.4f}) "
                f"line_search_steps={stats['line_search_steps']}"
                f"{'' if stats['accepted'] else ' (rejected: θ_old kept)'} SPS={sps}"
            )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C or SIGTERM alike; a second
        # interrupt waits until these files are complete. Before its first iteration ends, a
        # run leaves an earlier run's files (--overwrite) as they are: untrained is no better.
        with signals_held():
            if trained or not os.path.exists(os.path.join(out, "trpo.pt")):
                save_checkpoint(os.path.join(out, "trpo.pt"), last_good, args)
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
        "algo": "trpo",
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
