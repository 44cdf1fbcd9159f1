"""PPO-clip with a diagonal Gaussian policy for continuous actions (MuJoCo, Pendulum), in one file.

Proximal Policy Optimization, Schulman et al. 2017 (https://arxiv.org/abs/1707.06347), with
generalized advantage estimation, Schulman et al. 2015 (https://arxiv.org/abs/1506.02438),
as a diff of ppo_cartpole.py: the same loop, losses and flags, plus what continuous control
needs: a Gaussian policy with a learned, state-independent log σ; actions sampled unbounded
and clipped only on their way to the environment; running observation normalisation and
reward scaling by the running std of the discounted return, saved with the checkpoint and
frozen at evaluation. The defaults are CleanRL's MuJoCo settings (1M steps, HalfCheetah-v5);
PENDULUM below is the tuned set for Pendulum-v1.

    pip install mujoco                   # the MuJoCo environments (HalfCheetah-v5, Hopper-v5)
    python ppo_continuous.py             # HalfCheetah-v5, 1M steps
    python ppo_continuous.py --env-id Pendulum-v1 --total-timesteps 100000 --num-envs 4 \\
        --num-steps 256 --gamma 0.95 --num-minibatches 8 --learning-rate 1e-3
    python ppo_continuous.py --eval-checkpoint runs/<run>/agent.pt --eval-episodes 10
    python ppo_continuous.py --help
"""

import argparse
import copy
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
from torch.utils.tensorboard import SummaryWriter


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the environments")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and checkpoints go here; default runs/<run-name>")
    env_id: str = flag("HalfCheetah-v5", "a Gymnasium environment with a Box action space")
    total_timesteps: int = flag(1_000_000, "environment steps to train for, over all envs")
    learning_rate: float = flag(3e-4, "Adam step size at the start (see --anneal-lr)")
    anneal_lr: bool = flag(True, "decay the learning rate linearly to 0 over training")
    num_envs: int = flag(1, "parallel environments")
    num_steps: int = flag(2048, "steps per environment per rollout")
    gamma: float = flag(0.99, "discount factor γ")
    gae_lambda: float = flag(0.95, "GAE λ: 0 is one-step TD, 1 is Monte Carlo")
    num_minibatches: int = flag(32, "minibatches per epoch; must divide num_envs * num_steps")
    update_epochs: int = flag(10, "passes over each rollout")
    norm_adv: bool = flag(True, "normalise the advantages within each minibatch")
    loss_type: str = flag("clip", "policy objective: clip (L^CLIP) or kl_penalty")
    clip_coef: float = flag(0.2, "ε of the clipped surrogate")
    clip_vloss: bool = flag(False, "clip the value loss with the same ε, as in PPO2")
    ent_coef: float = flag(0.0, "c2: weight of the entropy bonus")
    vf_coef: float = flag(0.5, "c1: weight of the value loss")
    max_grad_norm: float = flag(0.5, "clip the global gradient norm to this")
    target_kl: float = flag(0.0, "stop the epochs early once approx KL exceeds this; 0 = off")
    kl_beta: float = flag(1.0, "kl_penalty: initial β")
    kl_target: float = flag(0.01, "kl_penalty: d_targ that the adaptive β aims at")
    hidden_size: int = flag(64, "width of the two hidden layers of actor and critic")
    init_log_std: float = flag(0.0, "initial log σ of every action dimension")
    norm_obs: bool = flag(True, "normalise observations by their running mean and std")
    norm_reward: bool = flag(True, "divide rewards by the running std of the discounted return")
    clip_obs: float = flag(10.0, "clip normalised observations to ±this")
    clip_reward: float = flag(10.0, "clip scaled rewards to ±this")
    solved_return: float = flag(
        0.0,
        "solved_at_step: last-20 mean return to reach; 0 = -200 on Pendulum-v1, else "
        "the env's reward_threshold",
    )
    eval_episodes: int = flag(0, "after training, evaluate the deterministic policy on N episodes")
    eval_checkpoint: str = flag("", "evaluate this saved agent.pt instead of training")
    capture_video: bool = flag(False, "record the evaluation episodes to <output-dir>/videos")


# The tuned Pendulum-v1 set (tuning seeds 1..12; see docs/ppo_continuous.md):
# python ppo_continuous.py --env-id Pendulum-v1 --total-timesteps 100000 --num-envs 4 ...
PENDULUM = dict(
    env_id="Pendulum-v1",
    total_timesteps=100_000,
    num_envs=4,
    num_steps=256,
    gamma=0.95,
    num_minibatches=8,
    learning_rate=1e-3,
)


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


def check_continuous_args(args):
    """Reject settings that would fail later with an obscure error, saying what to fix."""
    sizes = ("total_timesteps", "num_envs", "num_steps", "num_minibatches", "update_epochs")
    for name in (*sizes, "hidden_size", "learning_rate", "max_grad_norm"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if (args.num_envs * args.num_steps) % args.num_minibatches:
        raise ValueError(
            f"the batch of num_envs*num_steps={args.num_envs * args.num_steps} does not split "
            f"into --num-minibatches {args.num_minibatches} equal parts"
        )
    if args.loss_type not in ("clip", "kl_penalty"):
        raise ValueError(f"--loss-type must be clip or kl_penalty, not {args.loss_type!r}")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ValueError("--gamma and --gae-lambda must lie in [0, 1]")
    if not (args.clip_obs > 0 and args.clip_reward > 0 and args.eval_episodes >= 0):
        raise ValueError("--clip-obs and --clip-reward must be positive, --eval-episodes >= 0")
    if not math.isfinite(args.init_log_std):
        raise ValueError("--init-log-std must be finite")


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


def explained_variance(pred, target):
    """1 − Var[target − pred] / Var[target]: 1 is a perfect critic, ≤ 0 is no better than a
    constant. NaN when the targets do not vary."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


def gaussian_log_prob(action, mean, log_std):
    """log π(a|s) of a diagonal Gaussian N(μ, diag σ²), summed over the D action dimensions:

    log π(a|s) = −Σ_i [ (a_i − μ_i)² / (2 σ_i²) + log σ_i + ½ log 2π ]
    """
    # −Σ_i [(a_i − μ_i)² / (2σ_i²) + log σ_i + ½ log 2π]
    z = (action - mean) * torch.exp(-log_std)
    return -(0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_entropy(log_std):
    """Differential entropy of N(μ, diag σ²): H = Σ_i [log σ_i + ½ log(2πe)]; any leading
    shape, summed over the last (action) dimension. It does not depend on μ."""
    # H = Σ_i [log σ_i + ½ log(2πe)]
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q):
    """KL(p ‖ q) between two diagonal Gaussians, in closed form, summed over dimensions:

    KL = Σ_i [ log σ_q,i − log σ_p,i + (σ_p,i² + (μ_p,i − μ_q,i)²) / (2 σ_q,i²) − ½ ]
    """
    # Σ_i [log σ_q − log σ_p + (σ_p² + (μ_p − μ_q)²) / (2σ_q²) − ½]
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    mean_term = ((mean_p - mean_q) * torch.exp(-log_std_q)) ** 2
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)


def update_moments(mean, var, count, batch):
    """Merge a batch into running moments (Chan, Golub and LeVeque 1979, parallel variance):

    with the batch's n_B, μ_B, σ²_B, and δ = μ_B − μ_A, n = n_A + n_B:
    μ = μ_A + δ n_B / n
    σ² = (σ²_A n_A + σ²_B n_B + δ² n_A n_B / n) / n

    The result equals the mean and the (population) variance of every sample seen so far,
    whatever the batch sizes; count starts at 0. Works on numpy arrays, along axis 0.
    """
    n_b = batch.shape[0]
    if n_b == 0:
        return mean, var, count
    mean_b, var_b = batch.mean(0), batch.var(0)
    n = count + n_b
    delta = mean_b - mean
    # μ = μ_A + δ n_B / n
    new_mean = mean + delta * n_b / n
    # σ² = (σ²_A n_A + σ²_B n_B + δ² n_A n_B / n) / n
    new_var = (var * count + var_b * n_b + delta**2 * count * n_b / n) / n
    return new_mean, new_var, n


def normalize_obs(obs, mean, var, clip):
    """õ = clip((o − μ) / sqrt(σ² + 1e-8), −c, c), with the running μ, σ² of observations."""
    # õ = clip((o − μ) / sqrt(σ² + ε), −c, c)
    return np.clip((obs - mean) / np.sqrt(var + 1e-8), -clip, clip).astype(np.float32)


def discounted_return(ret, reward, valid, gamma):
    """The running discounted return per env whose std scales the rewards:

    R_t = γ R_{t−1} + r_t within an episode,   R = 0 on an autoreset step (valid = False),
    so each episode starts again from R = r of its first step.
    """
    # R_t = γ R_{t−1} + r_t, zeroed where the step is the autoreset of a new episode
    return np.where(valid, gamma * ret + reward, 0.0)


def scale_reward(reward, ret_var, clip):
    """r̃ = clip(r / sqrt(Var[R] + 1e-8), −c, c), with Var[R] the running variance of the
    discounted return R (not of r). Not centred: subtracting a mean would change which
    states are good to end in (Engstrom et al. 2020; OpenAI baselines' VecNormalize)."""
    # r̃ = clip(r / sqrt(Var[R] + ε), −c, c)
    return np.clip(reward / np.sqrt(ret_var + 1e-8), -clip, clip).astype(np.float32)


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
    """Two tanh hidden layers of width `hidden`, initialised by layer_init; `last_std` is the
    gain of the output layer (0.01 for a policy head, 1 for a value head)."""
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, hidden)),
        nn.Tanh(),
        layer_init(nn.Linear(hidden, out_dim), last_std),
    )


class GaussianAgent(nn.Module):
    """Separate actor and critic MLPs (tanh). The actor gives the mean μ_θ(s) of a diagonal
    Gaussian; log σ is one learned vector, the same in every state.

    Why state-independent: it is what both the TRPO and the PPO papers used on MuJoCo; σ then
    only shrinks as the whole policy grows sure, instead of collapsing in the states the
    policy gradient happens to push on (a state-dependent σ head can drive σ → 0 or ∞ on
    rarely-seen states); and the entropy and the log σ block of the Fisher matrix become
    constants, simple to check."""

    def __init__(self, obs_dim, act_dim, hidden=64, init_log_std=0.0):
        super().__init__()
        self.actor_mean = mlp(obs_dim, act_dim, hidden, 0.01)
        self.actor_log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))
        self.critic = mlp(obs_dim, 1, hidden, 1.0)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def sample(self, obs):
        """a = μ_θ(s) + σ ⊙ ε, ε ~ N(0, I): unbounded; the caller clips only what the
        environment receives, so log π_θold(a|s) is that of the sample itself."""
        mean = self.actor_mean(obs)
        return mean + self.actor_log_std.exp() * torch.randn_like(mean)

    def evaluate(self, obs, action):
        """log π_θ(a|s), log σ (broadcast to the batch) and V(s) for given actions."""
        mean = self.actor_mean(obs)
        log_std = self.actor_log_std.expand_as(mean)
        return gaussian_log_prob(action, mean, log_std), log_std, self.value(obs)


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def make_envs(env_id, num_envs, action_spaces, **kwargs):
    """A Gymnasium >= 1.0 vector env with next-step autoreset: the numpy-vectorised version
    when the environment has one, else one copy per env in this process ("sync"). Checks
    that the action space is one of `action_spaces`, the observation space a flat Box and
    the autoreset mode; closes the envs on any error."""
    try:
        spec = gym.spec(env_id)
        mode = "vector_entry_point" if spec.vector_entry_point else "sync"
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode, **kwargs)
    except Exception as e:  # gym.error.Error, ModuleNotFoundError (mujoco), ...
        raise ValueError(f"cannot make --env-id {env_id!r}: {e}") from None
    try:
        space, obs_space = envs.single_action_space, envs.single_observation_space
        if not isinstance(space, action_spaces):
            names = " or ".join(s.__name__ for s in action_spaces)
            raise ValueError(f"--env-id {env_id} has {space}; need {names}")
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"--env-id {env_id} has {obs_space}; need a flat Box")
        if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError(f"--env-id {env_id} does not autoreset in the next step")
    except ValueError:
        envs.close()
        raise
    return envs


def evaluate_deterministic(agent, env_id, episodes, seed, device, obs_stats, clip_obs, video=""):
    """Mean and std of the return of the deterministic policy a = clip(μ_θ(õ)), one episode
    in each of `episodes` parallel envs, with observations normalised by the *frozen*
    training statistics `obs_stats` = (μ, σ²) (None: no normalisation). Returns are the
    environment's own, unscaled. With `video`, episodes are recorded there as MP4."""
    kwargs = {}
    if video:
        kwargs = dict(render_mode="rgb_array", wrappers=[record_video_wrapper(video)])
    envs = make_envs(env_id, episodes, (gym.spaces.Box,), **kwargs)
    low, high = envs.single_action_space.low, envs.single_action_space.high
    returns, alive = np.zeros(episodes), np.ones(episodes, bool)
    try:
        obs, _ = envs.reset(seed=seed)
        while alive.any():
            if obs_stats is not None:
                obs = normalize_obs(obs, *obs_stats, clip_obs)
            with torch.no_grad():
                mean = agent.actor_mean(torch.as_tensor(obs, dtype=torch.float32, device=device))
            obs, reward, term, trunc, _ = envs.step(np.clip(mean.cpu().numpy(), low, high))
            returns += reward * alive
            alive &= ~(term | trunc)
    except gym.error.DependencyNotInstalled as e:  # rendering for --capture-video
        raise ValueError(f"--capture-video: {e}") from None
    finally:
        envs.close()
    return float(returns.mean()), float(returns.std())


def record_video_wrapper(folder):
    """A wrapper factory for make_vec: Gymnasium's RecordVideo on the first env only."""
    try:
        import moviepy  # noqa: F401  (RecordVideo writes MP4 through it)
    except ModuleNotFoundError:
        raise ValueError("--capture-video needs moviepy: pip install moviepy") from None
    counter = iter(range(1 << 30))

    def wrap(env):
        if next(counter) == 0:
            return gym.wrappers.RecordVideo(env, folder, episode_trigger=lambda _: True)
        return env

    return wrap


class Normalizer:
    """The running statistics of observations and discounted returns, with the per-env
    discounted return R. Updated from training rollouts only; frozen (never updated) at
    evaluation. Its state_dict() goes into the checkpoint."""

    def __init__(self, obs_dim, num_envs, args):
        self.args = args
        self.obs = (np.zeros(obs_dim), np.ones(obs_dim), 0)  # μ, σ², count
        self.ret = (np.zeros(()), np.ones(()), 0)
        self.R = np.zeros(num_envs)

    def observe(self, raw_obs):
        """Update the observation moments with raw_obs [N, D]; return it normalised."""
        if not self.args.norm_obs:
            return raw_obs.astype(np.float32)
        self.obs = update_moments(*self.obs, raw_obs.astype(np.float64))
        return normalize_obs(raw_obs, *self.obs[:2], self.args.clip_obs)

    def reward(self, reward, valid):
        """Update Var[R] with the valid steps' discounted returns; return the scaled reward."""
        if not self.args.norm_reward:
            return reward.astype(np.float32)
        self.R = discounted_return(self.R, reward, valid, self.args.gamma)
        self.ret = update_moments(*self.ret, self.R[valid])
        return scale_reward(reward, self.ret[1], self.args.clip_reward)

    def frozen_obs_stats(self):
        return self.obs[:2] if self.args.norm_obs else None

    def state_dict(self):
        return {"obs": list(self.obs), "ret": list(self.ret)}

    def load_state_dict(self, state):
        self.obs, self.ret = tuple(state["obs"]), tuple(state["ret"])


def rollout_normalized(agent, envs, obs, prev_done, num_steps, normalizer, device):
    """Collect num_steps steps in each env under π_θold, normalising observations and
    scaling rewards on the way (updating the running statistics).

    `obs` is the normalised observation the envs are in. Returns (batch, obs, prev_done).
    The batch holds [T, N] tensors: "obs" and "value" have T + 1 rows, the last being the
    observation after the final step and V of it; "action" (T, N, D) the unclipped samples,
    "logp" their log π_θold; "reward" the scaled rewards and "raw_reward" the env's own.
    """
    T, N = num_steps, envs.num_envs
    low, high = envs.single_action_space.low, envs.single_action_space.high
    obs_buf = np.zeros((T + 1, *obs.shape), np.float32)
    reward, raw_reward, terminated, done, valid = (np.zeros((T, N), np.float32) for _ in range(5))
    action = torch.zeros((T, N, *envs.single_action_space.shape), device=device)
    for t in range(T):
        obs_buf[t] = obs
        # Gymnasium >= 1.0 autoresets in the *next* step: the step after an episode's end
        # ignores the action, returns reward 0 and the new episode's first observation. It
        # is not a transition of the MDP, so it is marked invalid and gets no loss.
        valid[t] = ~prev_done
        with torch.no_grad():
            action[t] = agent.sample(torch.as_tensor(obs, device=device))
        # The Gaussian is unbounded: only the copy sent to the environment is clipped. The
        # stored action stays the sample, so log π_θold(a|s) is its true log-density
        # (clipping first would give actions at the bounds the wrong probability).
        env_action = np.clip(action[t].cpu().numpy(), low, high)
        raw_obs, raw_reward[t], terminated[t], truncated, _ = envs.step(env_action)
        reward[t] = normalizer.reward(raw_reward[t], ~prev_done)
        obs = normalizer.observe(raw_obs)
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
    arrays = dict(reward=reward, raw_reward=raw_reward, terminated=terminated, done=done)
    batch = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    batch.update(obs=obs_all, action=action, logp=logp, value=value)
    batch["valid"] = torch.as_tensor(valid > 0, device=device)
    return batch, obs, prev_done


def solved_threshold(args):
    """The last-20 mean return that counts as solved: --solved-return, or by default −200
    on Pendulum-v1 (the usual mark; its spec has none) and the spec's reward_threshold
    elsewhere (None: no mark)."""
    if args.solved_return != 0:
        return args.solved_return
    if args.env_id == "Pendulum-v1":
        return -200.0
    return gym.spec(args.env_id).reward_threshold


def load_continuous_checkpoint(path, device):
    """(agent, saved args, normalizer) from an agent.pt of ppo_continuous.py; ValueError for
    a missing, corrupt or truncated file or one written by another script."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
        if not isinstance(ckpt, dict) or ckpt.get("script") != "ppo_continuous":
            raise ValueError(f"--eval-checkpoint {path} was not written by ppo_continuous.py")
        saved = Args(**ckpt["args"])
        agent = GaussianAgent(*ckpt["dims"], saved.hidden_size).to(device)
        agent.load_state_dict(ckpt["agent"])
        normalizer = Normalizer(ckpt["dims"][0], 1, saved)
        normalizer.load_state_dict(ckpt["normalizer"])
    except ValueError:
        raise
    except Exception as e:  # unpickling errors of all kinds, missing keys, bad shapes
        raise ValueError(f"cannot load --eval-checkpoint {path}: {e}") from None
    return agent, saved, normalizer


def evaluate_checkpoint(args):
    """--eval-checkpoint: evaluate a saved agent with its saved statistics, without training."""
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    agent, saved, normalizer = load_continuous_checkpoint(args.eval_checkpoint, device)
    out = args.output_dir or os.path.dirname(os.path.abspath(args.eval_checkpoint))
    episodes = args.eval_episodes or 10
    video = os.path.join(out, "videos") if args.capture_video else ""
    mean, std = evaluate_deterministic(
        agent, saved.env_id, episodes, args.seed + 10_000, device,
        normalizer.frozen_obs_stats(), saved.clip_obs, video,
    )  # fmt: skip
    print(f"eval: mean return of the deterministic policy over {episodes} episodes = {mean:.1f}")
    return {
        "algo": "ppo_continuous",
        "env_id": saved.env_id,
        "checkpoint": args.eval_checkpoint,
        "eval_mean_return": mean,
        "eval_std_return": std,
        "eval_episodes": episodes,
        "video_dir": video or None,
    }


def train(args):
    check_continuous_args(args)
    if args.eval_checkpoint:
        return evaluate_checkpoint(args)
    start = time.time()
    run_name = f"{args.env_id}__ppo_continuous__{args.seed}__{int(start)}"
    out = args.output_dir or os.path.join("runs", run_name)
    os.makedirs(out, exist_ok=True)
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_envs(args.env_id, args.num_envs, (gym.spaces.Box,))
    dims = (envs.single_observation_space.shape[0], envs.single_action_space.shape[0])
    agent = GaussianAgent(*dims, args.hidden_size, args.init_log_std).to(device)
    # eps=1e-5 rather than 1e-8, as in OpenAI baselines' PPO.
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
    normalizer = Normalizer(dims[0], args.num_envs, args)
    threshold = solved_threshold(args)

    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    obs = normalizer.observe(envs.reset(seed=args.seed)[0])
    envs.action_space.seed(args.seed)
    prev_done = np.zeros(args.num_envs, bool)
    ep_return = np.zeros(args.num_envs)
    recent = deque(maxlen=20)
    episodes = []  # (global_step, return) of every finished training episode
    solved_at_step = solved_at_s = None
    global_step, beta = 0, args.kl_beta
    last_good = copy.deepcopy((agent.state_dict(), normalizer.state_dict()))
    t0 = time.time()
    print(f"training {args.env_id} for {args.total_timesteps} steps; logs in {out}")

    try:
        for iteration in range(1, num_iterations + 1):
            frac = 1.0 - (iteration - 1) / num_iterations
            lr = frac * args.learning_rate if args.anneal_lr else args.learning_rate
            optimizer.param_groups[0]["lr"] = lr

            b, obs, prev_done = rollout_normalized(
                agent, envs, obs, prev_done, args.num_steps, normalizer, device
            )
            for reward, done in zip(
                b["raw_reward"].cpu().numpy(), b["done"].cpu().numpy().astype(bool), strict=True
            ):
                global_step += args.num_envs
                ep_return += reward
                for ret in ep_return[done]:
                    episodes.append((global_step, ret))
                    recent.append(ret)
                    writer.add_scalar("charts/episodic_return", ret, global_step)
                    if (
                        solved_at_step is None
                        and threshold is not None
                        and len(recent) == 20
                        and np.mean(recent) >= threshold
                    ):
                        solved_at_step, solved_at_s = global_step, time.time() - t0
                        print(f"solved at step {global_step} after {solved_at_s:.1f}s")
                ep_return[done] = 0

            adv = gae(
                b["reward"], b["value"], b["terminated"], b["done"], args.gamma, args.gae_lambda
            )
            # V^targ = Â + V(s): the λ-return, the critic's regression target.
            ret = adv + b["value"][:-1]

            # Train only on real transitions (drop the reset steps).
            keep = b["valid"].flatten()
            b_obs, b_act = b["obs"][:-1].flatten(0, 1)[keep], b["action"].flatten(0, 1)[keep]
            b_logp, b_adv = b["logp"].flatten()[keep], adv.flatten()[keep]
            b_ret, b_val = ret.flatten()[keep], b["value"][:-1].flatten()[keep]

            # ---- Update: several epochs of shuffled minibatches ------------------------
            stats = []
            for _epoch in range(args.update_epochs):
                perm = torch.randperm(len(b_obs), device=device)
                for mb in torch.tensor_split(perm, args.num_minibatches):
                    logp, log_std, v = agent.evaluate(b_obs[mb], b_act[mb])
                    mb_adv = b_adv[mb]
                    if args.norm_adv and len(mb) > 1:
                        mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
                    if args.loss_type == "clip":
                        pg_loss, clipfrac = clipped_surrogate_loss(
                            logp, b_logp[mb], mb_adv, args.clip_coef
                        )
                    else:  # nothing is clipped in this objective
                        pg_loss = kl_penalty_loss(logp, b_logp[mb], mb_adv, beta)
                        clipfrac = torch.zeros((), device=device)
                    v_clip = args.clip_coef if args.clip_vloss else 0.0
                    v_loss = value_loss(v, b_val[mb], b_ret[mb], v_clip)
                    entropy = gaussian_entropy(log_std).mean()
                    # L = L^CLIP − c1 L^VF + c2 S is maximised; we minimise its negative.
                    loss = pg_loss + args.vf_coef * v_loss - args.ent_coef * entropy
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                    with torch.no_grad():
                        kl = approx_kl(logp, b_logp[mb])
                    stats.append(torch.stack([pg_loss, v_loss, entropy, kl, clipfrac]))
                if args.target_kl > 0 and kl > args.target_kl:
                    break  # early stop: the policy has moved far enough from π_θold

            pg_l, v_l, ent, kl_mean, clipfrac = torch.stack(stats).mean(0).tolist()
            # One check per iteration, not a device sync per minibatch: a NaN anywhere in
            # the losses ends up in these means and in the parameters.
            params = torch.cat([p.detach().flatten() for p in agent.parameters()])
            if not (np.isfinite([pg_l, v_l, ent]).all() and torch.isfinite(params).all()):
                raise FloatingPointError(
                    f"non-finite loss at iteration {iteration}; the checkpoint keeps the "
                    "parameters of the iteration before; try a lower --learning-rate"
                )
            last_good = copy.deepcopy((agent.state_dict(), normalizer.state_dict()))
            if args.loss_type == "kl_penalty":
                with torch.no_grad():
                    d = approx_kl(agent.evaluate(b_obs, b_act)[0], b_logp).item()
                beta = adapt_kl_beta(beta, d, args.kl_target)
                writer.add_scalar("losses/kl_beta", beta, global_step)
                writer.add_scalar("losses/kl_after_update", d, global_step)
            sps = int(global_step / (time.time() - t0))
            for name, value in [
                ("losses/policy_loss", pg_l),
                ("losses/value_loss", v_l),
                ("losses/entropy", ent),
                ("losses/approx_kl", kl_mean),
                ("losses/clipfrac", clipfrac),
                ("losses/explained_variance", explained_variance(b_val, b_ret)),
                ("charts/action_std", agent.actor_log_std.exp().mean().item()),
                ("charts/learning_rate", lr),
                ("charts/SPS", sps),
                ("charts/progress", global_step / args.total_timesteps),
            ]:
                writer.add_scalar(name, value, global_step)
            if iteration % max(1, num_iterations // 10) == 0:
                mean = np.mean(recent) if recent else float("nan")
                print(
                    f"[{100 * iteration // num_iterations:3d}%] step {global_step} "
                    f"mean_return(last 20)={mean:.1f} approx_kl={kl_mean:.4f} SPS={sps}"
                )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C alike.
        save_atomic(
            {
                "script": "ppo_continuous",
                "agent": last_good[0],
                "normalizer": last_good[1],
                "dims": dims,
                "args": dataclasses.asdict(args),
            },
            os.path.join(out, "agent.pt"),
        )
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

    eval_return = eval_std = None
    if args.eval_episodes > 0:
        video = os.path.join(out, "videos") if args.capture_video else ""
        eval_return, eval_std = evaluate_deterministic(
            agent, args.env_id, args.eval_episodes, args.seed + 10_000, device,
            normalizer.frozen_obs_stats(), args.clip_obs, video,
        )  # fmt: skip
        print(
            f"eval: mean return of the deterministic policy over {args.eval_episodes} "
            f"episodes = {eval_return:.1f}"
        )
    return {
        "algo": "ppo_continuous_" + args.loss_type,
        "env_id": args.env_id,
        "seed": args.seed,
        "global_step": global_step,
        "solved_at_step": solved_at_step,
        "solved_at_s": None if solved_at_s is None else round(solved_at_s, 2),
        "final_mean_return": float(np.mean(recent)) if recent else None,
        "eval_mean_return": eval_return,
        "eval_std_return": eval_std,
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
