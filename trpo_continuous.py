"""TRPO with a diagonal Gaussian policy for continuous actions (Pendulum, MuJoCo), in one file.

Schulman et al. 2015, "Trust Region Policy Optimization" (https://arxiv.org/abs/1502.05477),
with generalized advantage estimation (https://arxiv.org/abs/1506.02438), as a diff of
trpo.py: the same conjugate gradient, Fisher-vector product, step size and line search, with
the policy of ppo_continuous.py (a diagonal Gaussian with a learned, state-independent log σ;
actions clipped only on their way to the environment), its running observation and reward
normalisation (saved with the model, frozen at evaluation), and the closed-form Gaussian KL.

    python trpo_continuous.py --output-dir runs/pendulum  # Pendulum-v1, 100k steps
    python trpo_continuous.py --env-id HalfCheetah-v5 --total-timesteps 1000000
    python trpo_continuous.py --eval-checkpoint runs/pendulum/model.pt --capture-video"""

import signal

if __name__ == "__main__":  # until main() runs, Ctrl-C ends the process without a traceback
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
import threading
import time
import warnings

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters
from torch.utils.tensorboard import SummaryWriter

SCRIPT = "trpo_continuous.py"  # recorded in checkpoints, checked when one is loaded


def flag(default, help, rule=None):
    """A field of Args that is also a --flag; parse_args checks its rule (see RULES)."""
    return dataclasses.field(default=default, metadata=dict(help=help, rule=rule))


@dataclasses.dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the environments", "in [0, 2^32)")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and model.pt go here; default runs/<env>__<script>__...")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
    env_id: str = flag("Pendulum-v1", "a Gymnasium environment with a Box action space")
    total_timesteps: int = flag(100_000, "environment steps to train for, over all envs", "> 0")
    num_envs: int = flag(8, "parallel environments", "> 0")
    num_steps: int = flag(256, "steps per environment per rollout (one TRPO step each)", "> 0")
    gamma: float = flag(0.95, "discount factor γ", "in [0, 1]")
    gae_lambda: float = flag(0.95, "GAE λ: 0 is one-step TD, 1 is Monte Carlo", "in [0, 1]")
    max_kl: float = flag(0.02, "δ, the trust region: the bound on the mean KL of a step", "> 0")
    cg_iters: int = flag(10, "most conjugate-gradient iterations for F s = g", "> 0")
    cg_damping: float = flag(0.1, "λ added to the Fisher matrix: (F + λI) s = g", ">= 0")
    cg_tol: float = flag(1e-8, "CG stops once |residual| <= cg_tol·|g|; below 1", ">= 0")
    line_search_steps: int = flag(10, "most backtracking steps; each halves the step", "> 0")
    learning_rate: float = flag(1e-3, "Adam step size of the critic", "> 0")
    critic_epochs: int = flag(10, "passes of critic regression over each rollout", "> 0")
    critic_minibatch_size: int = flag(256, "minibatch size of the critic regression", "> 0")
    hidden_size: int = flag(64, "width of the two hidden layers of policy and critic", "> 0")
    init_log_std: float = flag(0.0, "initial log σ of every action dimension", "in [-20, 20]")
    norm_obs: bool = flag(True, "normalise observations by their running mean and std")
    norm_reward: bool = flag(True, "divide rewards by the running std of the discounted return")
    clip_obs: float = flag(10.0, "clip normalised observations to ±this", "> 0")
    clip_reward: float = flag(10.0, "clip scaled rewards to ±this", "> 0")
    solved_return: float = flag(0.0, "last-20 mean return that is solved; 0: the env's", "finite")
    eval_episodes: int = flag(10, "deterministic episodes to evaluate after training", ">= 0")
    eval_checkpoint: str = flag("", "evaluate this saved model.pt instead of training")
    capture_video: bool = flag(False, "record the evaluation episodes in <output-dir>/videos")


# ---- The math: pure functions of tensors and arrays, each checked alone by the tests ----
def gae(rewards, values, terminated, dones, gamma, lam):
    """Generalized advantage estimation over a [T, N] rollout.

    δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t)
    Â_t = δ_t + γ λ (1 − done_t) Â_{t+1}

    `values` has T + 1 rows: values[T] is V of the observation after the last step. With
    Gymnasium's next-step autoreset, the row after an episode's last step holds that
    episode's final observation, so at a truncation δ_t bootstraps with V(final obs) while
    the recursion still stops (done = terminated or truncated). Returns Â, shape [T, N]."""
    delta = rewards + gamma * values[1:] * (1 - terminated) - values[:-1]
    decay = gamma * lam * (1 - dones)
    advantages, next_adv = torch.zeros_like(rewards), torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        advantages[t] = next_adv = delta[t] + decay[t] * next_adv
    return advantages


def gaussian_log_prob(action, mean, log_std):
    """log π(a|s) of a diagonal Gaussian N(μ, diag σ²), summed over the D action dimensions:

    log π(a|s) = −Σ_i [ (a_i − μ_i)² / (2 σ_i²) + log σ_i + ½ log 2π ]"""
    z = (action - mean) * torch.exp(-log_std)
    return -(0.5 * z**2 + log_std + 0.5 * math.log(2 * math.pi)).sum(-1)


def gaussian_kl(mean_p, log_std_p, mean_q, log_std_q):
    """KL(p ‖ q) between two diagonal Gaussians, in closed form, summed over dimensions:

    KL = Σ_i [ log σ_q,i − log σ_p,i + (σ_p,i² + (μ_p,i − μ_q,i)²) / (2 σ_q,i²) − ½ ]"""
    var_ratio = torch.exp(2 * (log_std_p - log_std_q))
    mean_term = ((mean_p - mean_q) * torch.exp(-log_std_q)) ** 2
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5).sum(-1)


def surrogate_advantage(logp, logp_old, adv):
    """The surrogate objective of TRPO (its eq. 14), to be maximised:

    L(θ) = E[π_θ(a|s) / π_θold(a|s) · Â] = mean(exp(log π_θ − log π_θold) · Â)

    At θ = θ_old it equals E[Â], and its gradient there is the policy gradient g."""
    return (torch.exp(logp - logp_old) * adv).mean()


def conjugate_gradient(matvec, b, iters, tol):
    """Solve A x = b for a symmetric positive-definite A known only through v ↦ A v
    (Hestenes and Stiefel 1952), starting from x_0 = 0, r_0 = p_0 = b:

    α_k = r_kᵀr_k / p_kᵀA p_k,   x_{k+1} = x_k + α_k p_k,   r_{k+1} = r_k − α_k A p_k
    p_{k+1} = r_{k+1} + (r_{k+1}ᵀr_{k+1} / r_kᵀr_k) p_k

    Stops after `iters` iterations or once |r_k| <= tol·|b|. In exact arithmetic it solves an
    n×n system in n iterations; TRPO stops after about 10, because a rough direction is enough
    when the line search checks the step anyway."""
    x, r, p = torch.zeros_like(b), b.clone(), b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr.sqrt() <= tol * b.norm():
            break
        Ap = matvec(p)
        alpha = rr / (p @ Ap)
        x, r = x + alpha * p, r - alpha * Ap
        rr_new = r @ r
        p, rr = r + (rr_new / rr) * p, rr_new
    return x


def fisher_vector_product(kl, params, damping):
    """Return v ↦ (F + damping·I) v, without ever forming the matrix F:

    KL̄(θ) = E_s[KL(π_θold(·|s) ‖ π_θ(·|s))],   F = ∇²_θ KL̄ at θ = θ_old
    F v = ∇_θ((∇_θ KL̄)ᵀ v)                   (Pearlmutter 1994: double backprop)

    `kl` is KL̄ at θ_old, a graph of `params` with π_θold held fixed: its value and gradient
    are 0 there, its Hessian is the Fisher information matrix of the policy. Damping keeps the
    system positive definite where the batch's Fisher matrix is nearly singular."""
    grad_kl = parameters_to_vector(torch.autograd.grad(kl, params, create_graph=True))

    def matvec(v):  # every CG iteration reuses the graph of ∇_θ KL̄
        hvp = torch.autograd.grad(grad_kl @ v, params, retain_graph=True)
        return parameters_to_vector(hvp) + damping * v

    return matvec


def natural_step(params, evaluate, max_kl, damping, cg_iters, cg_tol, ls_steps):
    """The step of TRPO (§6 and appendix C) for any policy, in place on `params`:

    maximise_θ  L(θ) = E[π_θ(a|s) / π_θold(a|s) · Â]
    subject to  KL̄(θ) = E_s[KL(π_θold(·|s) ‖ π_θ(·|s))] <= δ

    With L linearised (gradient g) and KL̄ expanded to second order (Fisher F) at θ_old, the
    solution is θ_old + β s with F s = g (conjugate gradient) and β = sqrt(2δ / sᵀF s), the
    step that puts the quadratic model exactly on the boundary: ½ (βs)ᵀF(βs) = δ. The models
    are only local, so a backtracking line search tries β s, β s/2, β s/4, ... (at most
    `ls_steps` candidates) and accepts the first with the real KL̄ <= δ and the real L above
    L(θ_old); if none passes, θ_old is kept. The linear model predicts an improvement gᵀΔθ.

    `evaluate()` gives (KL̄, L) at the current parameters, as tensors; F is damped, F + λI.
    Returns statistics for the logs."""
    kl_old, surr_old = evaluate()
    fvp = fisher_vector_product(kl_old, params, damping)
    g = parameters_to_vector(torch.autograd.grad(surr_old, params, retain_graph=True))
    s = conjugate_gradient(fvp, g, cg_iters, cg_tol)  # s ≈ F⁻¹ g, the natural gradient
    sFs = s @ fvp(s)
    stats = dict(surrogate=surr_old.item(), kl=0.0, improvement=0.0, expected_improvement=0.0)
    stats.update(line_search_steps=0, accepted=0.0, grad_norm=g.norm().item())
    if not sFs > 0:  # g = 0 (all Â equal): no direction to move in; NaN is left to the caller
        return stats
    full_step = torch.sqrt(2 * max_kl / sFs) * s
    theta_old = parameters_to_vector(params).detach()
    with torch.no_grad():
        for k in range(ls_steps):
            step = 0.5**k * full_step
            vector_to_parameters(theta_old + step, params)
            kl, surr = evaluate()
            kl, improvement = kl.item(), (surr - surr_old).item()
            stats.update(kl=kl, improvement=improvement, expected_improvement=(g @ step).item())
            stats["line_search_steps"] = k + 1
            if kl <= max_kl and improvement > 0:
                stats["accepted"] = 1.0
                return stats
        vector_to_parameters(theta_old, params)
    return stats


def trpo_step(params, policy, log_prob, kl, obs, action, adv, args):
    """One TRPO update, in place on `params`, on one batch: natural_step() for the policy
    whose distribution in the states `obs` has the parameters d = policy(obs) (a tuple: the
    logits; μ and log σ), with log π(a|s) = log_prob(a, *d) and KL(π_p ‖ π_q) = kl(*d_p, *d_q)
    per state."""
    with torch.no_grad():
        old = policy(obs)
        logp_old = log_prob(action, *old)

    def evaluate():  # (KL̄, L) at the current θ
        new = policy(obs)
        return kl(*old, *new).mean(), surrogate_advantage(log_prob(action, *new), logp_old, adv)

    return natural_step(params, evaluate, args.max_kl, args.cg_damping, args.cg_iters,
                        args.cg_tol, args.line_search_steps)  # fmt: skip


def fit_critic(critic, optimizer, obs, returns, epochs, minibatch_size):
    """Regress V(s) on the λ-returns V^targ = Â + V_old(s), minimising E[(V(s) − V^targ)²]
    with Adam on shuffled minibatches. Returns the mean squared error over the last epoch."""
    for _epoch in range(epochs):
        total = 0.0
        for mb in torch.randperm(len(obs), device=obs.device).split(minibatch_size):
            loss = (critic(obs[mb]).squeeze(-1) - returns[mb]).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(mb)
    return total / len(obs)


def update_moments(mean, var, count, batch):
    """Merge a batch into running moments (Chan, Golub and LeVeque 1979, parallel variance):

    with the batch's n_B, μ_B, σ²_B, and δ = μ_B − μ_A, n = n_A + n_B:
    μ = μ_A + δ n_B / n
    σ² = (σ²_A n_A + σ²_B n_B + δ² n_A n_B / n) / n

    The result equals the mean and the (population) variance of every sample seen so far,
    whatever the batch sizes; count starts at 0. Works on numpy arrays, along axis 0."""
    n_b = batch.shape[0]
    if n_b == 0:
        return mean, var, count
    mean_b = batch.sum(0) / n_b  # batch.mean(0) bit for bit, without its ~30 µs of overhead
    var_b = ((batch - mean_b) ** 2).sum(0) / n_b
    n, delta = count + n_b, mean_b - mean
    return mean + delta * n_b / n, (var * count + var_b * n_b + delta**2 * count * n_b / n) / n, n


def normalize_obs(obs, mean, var, clip):
    """õ = clip((o − μ) / sqrt(σ² + 1e-8), −c, c), with the running μ, σ² of observations."""
    return np.clip((obs - mean) / np.sqrt(var + 1e-8), -clip, clip).astype(np.float32)


def discounted_return(ret, reward, valid, gamma):
    """The running discounted return per env, whose std scales the rewards:
    R_t = γ R_{t−1} + r_t within an episode, R = 0 on an autoreset step (valid = False), so
    that each episode starts again from R = r of its first step."""
    return np.where(valid, gamma * ret + reward, 0.0)


def scale_reward(reward, ret_var, clip):
    """r̃ = clip(r / sqrt(Var[R] + 1e-8), −c, c), with Var[R] the running variance of the
    discounted return R (not of r). Not centred: subtracting a mean would change which
    states are good to end in (Engstrom et al. 2020; OpenAI baselines' VecNormalize)."""
    return np.clip(reward / np.sqrt(ret_var + 1e-8), -clip, clip).astype(np.float32)


# ---- The agent ----
def mlp(in_dim, out_dim, hidden, last_std):
    """Two tanh hidden layers of width `hidden`; orthogonal weights, zero biases, gain √2 for
    the hidden layers and `last_std` for the output: 0.01 for the policy head (the first
    policy is near uniform), 1 for the value head (Huang et al. 2022, PPO detail #2)."""
    sizes, layers = (in_dim, hidden, hidden, out_dim), []
    for i in range(3):
        layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.Tanh()]
        nn.init.orthogonal_(layers[-2].weight, 2**0.5 if i < 2 else last_std)
        nn.init.zeros_(layers[-2].bias)
    return nn.Sequential(*layers[:-1])


class GaussianAgent(nn.Module):
    """Separate actor and critic MLPs (tanh). The actor gives the mean μ_θ(s) of a diagonal
    Gaussian; log σ is one learned vector, the same in every state, as in the TRPO and PPO
    papers on MuJoCo: σ then shrinks only as the whole policy grows sure, instead of collapsing
    in the states the policy gradient happens to push on (a state-dependent σ head can drive
    σ → 0 or ∞ on rarely-seen states); and the entropy and the log σ block of the Fisher
    matrix are constants, simple to check."""

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


def gaussian_policy(agent, obs):
    """The parameters of the Gaussian policy in the states `obs`: μ_θ(s) and log σ broadcast
    to its shape. For this policy the Fisher matrix of the trust region has a known form
    (tests/test_trpo_continuous.py builds it): E_s[Jᵀ Σ⁻¹ J] for the mean network's weights
    (J = ∂μ/∂θ), 2 on the diagonal for each log σ_i, and 0 between the two."""
    mean = agent.actor_mean(obs)
    return mean, agent.actor_log_std.expand_as(mean)


class Normalizer:
    """The running statistics of observations and discounted returns, with the per-env
    discounted return R. Updated from training rollouts only; frozen (never updated) at
    evaluation: the policy must see observations as it saw them in training (SB3 #870). Its
    state_dict() (tensors, so that checkpoints load with weights_only) is saved with the model."""

    def __init__(self, obs_dim, num_envs, args):
        self.args, self.R = args, np.zeros(num_envs)
        self.obs = (np.zeros(obs_dim), np.ones(obs_dim), 0)  # μ, σ², count
        self.ret = (np.zeros(()), np.ones(()), 0)

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

    def state_dict(self):  # copies: the last good state must not move on with training
        return {k: [torch.tensor(x, dtype=torch.float64) for x in getattr(self, k)]
                for k in ("obs", "ret")}  # fmt: skip

    def load_state_dict(self, state):
        self.obs, self.ret = (tuple(x.numpy() for x in state[k]) for k in ("obs", "ret"))


# ---- Rollout, update, and the training loop ----
@torch.no_grad()  # once for the whole rollout, not once per step
def rollout_normalized(agent, envs, obs, prev_done, num_steps, normalizer, device):
    """num_steps steps in each env under π_θold: (batch of [T, N] tensors, obs, prev_done),
    observations normalised and rewards scaled on the way (the running statistics updated).
    "obs" and "value" have T + 1 rows, the last for the observation after the final step;
    "action" [T, N, D] holds the unclipped samples, "reward" the scaled rewards."""
    T, N = num_steps, envs.num_envs
    low, high = envs.single_action_space.low, envs.single_action_space.high
    obs_buf = np.zeros((T + 1, *obs.shape), np.float32)
    reward, raw_reward, terminated, done, valid = (np.zeros((T, N), np.float32) for _ in range(5))
    action = np.zeros((T, N, *envs.single_action_space.shape), np.float32)
    for t in range(T):
        obs_buf[t] = obs
        # Gymnasium >= 1.0 autoresets in the *next* step: the step after an episode's end
        # ignores the action, returns reward 0 and the new episode's first observation. It
        # is not a transition of the MDP, so it is marked invalid and gets no loss.
        valid[t] = ~prev_done
        action[t] = agent.sample(torch.as_tensor(obs, device=device)).cpu().numpy()
        # Only the copy sent to the environment is clipped: the stored sample keeps its true
        # log-density (clipping first gives actions at the bounds the wrong probability).
        env_action = np.clip(action[t], low, high)
        raw_obs, raw_reward[t], terminated[t], truncated, _ = envs.step(env_action)
        reward[t] = normalizer.reward(raw_reward[t], ~prev_done)
        obs = normalizer.observe(raw_obs)
        prev_done = terminated[t].astype(bool) | truncated
        done[t] = prev_done
    obs_buf[T] = obs
    # log π_θold and V in one batched pass. The row after a truncation holds the episode's
    # final observation: V of it is gae()'s bootstrap (truncation is not termination).
    obs_all, action = (torch.as_tensor(x, device=device) for x in (obs_buf, action))
    logp = agent.evaluate(obs_all[:-1], action)[0]
    value = agent.value(obs_all)
    arrays = dict(reward=reward, raw_reward=raw_reward, terminated=terminated, done=done)
    batch = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    batch.update(obs=obs_all, action=action, logp=logp, value=value)
    batch["valid"] = torch.as_tensor(valid > 0, device=device)
    return batch, obs, prev_done


def valid_transitions(b, adv):
    """The rollout's real transitions (autoreset steps dropped) as flat tensors, with Â and
    the λ-return V^targ = Â + V(s), the critic's regression target."""
    flat = dict(obs=b["obs"][:-1], action=b["action"], logp=b["logp"], adv=adv,
                ret=adv + b["value"][:-1], value=b["value"][:-1])  # fmt: skip
    return {k: v.flatten(0, 1)[b["valid"].flatten()] for k, v in flat.items()}


def train(args):
    """rollout → advantages → TRPO step of the policy, regression of the critic → log."""
    quiet_mujoco()
    if args.eval_checkpoint:  # no training: the saved agent, its saved statistics frozen
        return evaluate_checkpoint(args, (gym.spaces.Box,), GaussianAgent, evaluate_normalized)
    require(args.cg_tol < 1, "--cg-tol must be below 1: |r_0| = |g| would stop CG at once")
    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    run = Run(args, (gym.spaces.Box,), num_iterations)  # seeds, envs, files, logging
    run.threshold = solved_threshold(args)  # once make_envs has checked --env-id
    envs, device = run.envs, run.device
    obs_dim, act_dim = envs.dims
    agent = GaussianAgent(obs_dim, act_dim, args.hidden_size, args.init_log_std).to(device)
    # Only the critic has an optimizer: the policy moves by the TRPO step alone.
    optimizer = torch.optim.Adam(agent.critic.parameters(), lr=args.learning_rate)
    normalizer = Normalizer(obs_dim, args.num_envs, args)
    obs = normalizer.observe(envs.reset(seed=args.seed)[0])
    prev_done, ep_return = np.zeros(args.num_envs, bool), np.zeros(args.num_envs)
    global_step, gamma, lam = 0, args.gamma, args.gae_lambda
    actor = [*agent.actor_mean.parameters(), agent.actor_log_std]  # θ of the policy
    try:
        for _iteration in range(num_iterations):
            b, obs, prev_done = rollout_normalized(
                agent, envs, obs, prev_done, args.num_steps, normalizer, device
            )
            # Episode returns are the environment's own rewards, not the scaled ones.
            global_step = run.add_rollout(ep_return, b["raw_reward"], b["done"], global_step)
            adv = gae(b["reward"], b["value"], b["terminated"], b["done"], gamma, lam)
            t = valid_transitions(b, adv)
            # Normalised Â. Its scale cannot change the step (s ∝ g and β ∝ 1/|g|, so δ alone
            # sets the length); subtracting the mean is one more baseline, against variance.
            t_adv = (t["adv"] - t["adv"].mean()) / (t["adv"].std() + 1e-8)
            stats = trpo_step(actor, lambda o: gaussian_policy(agent, o), gaussian_log_prob,
                              gaussian_kl, t["obs"], t["action"], t_adv, args)  # fmt: skip
            v_loss = fit_critic(agent.critic, optimizer, t["obs"], t["ret"], args.critic_epochs,
                                args.critic_minibatch_size)  # fmt: skip
            stats = dict(value_loss=v_loss, **stats)  # the first 3 are checked finite
            stats["action_std"] = agent.actor_log_std.exp().mean().item()
            run.iteration(global_step, stats, agent, "--learning-rate or --max-kl",
                          normalizer=normalizer.state_dict())  # fmt: skip
    finally:  # on success, a non-finite loss, Ctrl-C and SIGTERM alike
        run.finish()
    frozen = normalizer.frozen_obs_stats()
    returns = run.eval_envs and evaluate_deterministic(agent, run.eval_envs, args.seed + 10_000,
                                                       device, frozen, args.clip_obs)  # fmt: skip
    return run.summary("trpo_continuous", global_step, returns)


# ==== Plumbing: command line, envs, files, evaluation. The algorithm ends above. ====
# Each piece is the same text in every script that has it (tests/test_shared_code.py).
RULES = {None: lambda v: True, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
         "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 2^32)": lambda v: 0 <= v < 2**32,
         "finite": lambda v: True, "in [-20, 20]": lambda v: -20 <= v <= 20}  # fmt: skip


def parse_args(argv=None):
    """Args from the command line; a value that breaks its flag's rule is a ValueError."""
    parser = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__)  # fmt: skip
    for f in dataclasses.fields(Args):
        is_bool, shown = type(f.default) is bool, f" (default: {f.default})" * (f.default != "")
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata[
            "help"] + shown, type=None if is_bool else type(f.default),
            action=argparse.BooleanOptionalAction if is_bool else None)  # fmt: skip
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = Args(**vars(parser.parse_args(argv)))
    for f in dataclasses.fields(args):
        v, rule = getattr(args, f.name), f.metadata["rule"]
        ok = v in rule if isinstance(rule, tuple) else RULES[rule](v)
        require(ok and (not isinstance(v, float) or np.isfinite(v)),
                f"--{f.name.replace('_', '-')} must be {rule or 'finite'}, not {v!r}")  # fmt: skip
    return args


def require(ok, message):
    if not ok:
        raise ValueError(message)


def make_envs(env_id, num_envs, action_spaces, video_dir=None):
    """A Gymnasium >= 1.0 vector env with next-step autoreset (numpy-vectorised if the env has
    a version so); float32 observations; RecordVideo of each env's first episode into video_dir."""
    flag = "--capture-video" if video_dir else "--env-id"
    try:  # copy=False: sync envs hand back their buffer, not a deepcopy; astype() copies
        kwargs = dict(vector_kwargs=dict(copy=False))
        if video_dir:
            names = iter(range(num_envs))
            kwargs.update(render_mode="rgb_array", wrappers=[lambda env: gym.wrappers.RecordVideo(
                env, video_dir, lambda ep: ep == 0, name_prefix=f"env{next(names)}")])  # fmt: skip
        elif gym.spec(env_id).vector_entry_point is not None:
            kwargs = {}
        envs = gym.make_vec(env_id, num_envs, "sync" if video_dir else None, **kwargs)
        if video_dir:  # RecordVideo checked moviepy; a missing renderer fails now, not after a run
            (probe := gym.make(env_id, render_mode="rgb_array")).reset()
            probe.render(), probe.close()
    except Exception as e:  # gym.error.Error, DependencyNotInstalled (names the package), ...
        raise ValueError(f"{flag} {env_id}: {brief(e)}") from None
    act, obs = envs.single_action_space, envs.single_observation_space
    ok = isinstance(obs, gym.spaces.Box) and len(obs.shape) == 1 and isinstance(act, action_spaces)
    if not (ok and envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP):
        envs.close()
        need = " or ".join(a.__name__ for a in action_spaces)
        raise ValueError(f"--env-id {env_id} has {obs} observations and {act} actions; need a "
                         f"flat Box and {need}, with next-step autoreset")  # fmt: skip

    def as_float32(o):  # a NaN would fail deep inside sampling, without naming the env
        require(np.isfinite(o).all(), f"--env-id {env_id} returned a NaN or inf observation")
        return o.astype(np.float32)

    box = gym.spaces.Box(-np.inf, np.inf, obs.shape, np.float32)  # no network uses bounds
    envs = gym.wrappers.vector.TransformObservation(envs, as_float32, single_observation_space=box)
    envs.dims = obs.shape[0], getattr(act, "n", None) or act.shape[0]  # the networks' in, out
    return envs


def quiet_mujoco():
    """MuJoCo's warnings as Python warnings, less its deprecation of 'settotalmass' (in
    HalfCheetah-v5's XML, not ours) and the MUJOCO_LOG.TXT its own handler writes."""
    with contextlib.suppress(ImportError):  # no MuJoCo: Pendulum-v1 needs none
        import mujoco

        mujoco.set_mju_user_warning(lambda m: "settotalmass" in m or warnings.warn(m, stacklevel=1))


def solved_threshold(args):
    """The last-20 mean return that counts as solved: --solved-return, else −200 on Pendulum-v1
    (the usual mark; its spec has none), else the spec's reward_threshold (None: no mark)."""
    pendulum = args.env_id == "Pendulum-v1"
    return args.solved_return or (-200.0 if pendulum else gym.spec(args.env_id).reward_threshold)


class Run:
    """A run's plumbing: seeds and one thread (faster for small networks), envs, --output-dir,
    TensorBoard, the episodes, the solved step (last-20 mean ≥ `threshold`), progress, saves."""

    def __init__(self, args, action_spaces, iterations, threshold=475.0):
        self.args, self.iterations, self.threshold = args, iterations, threshold
        np.random.seed(args.seed), torch.manual_seed(args.seed), torch.set_num_threads(1)
        self.device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
        self.envs = make_envs(args.env_id, args.num_envs, action_spaces)
        name = f"{args.env_id}__{SCRIPT[:-3]}__{args.seed}__{int(time.time())}"
        self.out = args.output_dir or os.path.join("runs", name)
        require(args.overwrite or not os.path.exists(f"{self.out}/model.pt"),
                f"--output-dir {self.out} holds a run; pass --overwrite to replace it")  # fmt: skip
        video = f"{self.out}/videos" if args.capture_video else None  # checked before training
        n = args.eval_episodes
        self.eval_envs = make_envs(args.env_id, n, action_spaces, video) if n else None
        # A full disk: one error line, no thread's traceback; close() waits for the next flush.
        threading.excepthook = lambda a: isinstance(a.exc_value, OSError) or sys.excepthook(*a[:3])
        self.writer = SummaryWriter(self.out, flush_secs=2)
        self.writer.add_text("args", json.dumps(vars(args), indent=1))
        self.episodes, self.done, self.shown, self.t0 = [], 0, 0, time.time()
        self.solved_at_step = self.solved_at_s = self.state = None
        print(f"{SCRIPT} on {args.env_id} for {args.total_timesteps} steps; files in {self.out}")

    def add_rollout(self, ep_return, rewards, dones, step):
        """Log the episodes ending in a [T, N] rollout; `step` counts every vector-env step."""
        for reward, done in zip(rewards.cpu().numpy(), dones.cpu().numpy() > 0, strict=True):
            step += len(reward)
            ep_return += reward
            for ret in ep_return[done]:
                self.episodes.append((step, ret))
                self.writer.add_scalar("charts/episodic_return", ret, step)
                marked = self.threshold is not None and self.solved_at_step is None
                if marked and len(self.episodes) >= 20 and self.mean() >= self.threshold:
                    self.solved_at_step, self.solved_at_s = step, time.time() - self.t0
            ep_return[done] = 0
        return step

    def mean(self):  # of the last 20 episodes' returns
        return float(np.mean([r for _, r in self.episodes[-20:]])) if self.episodes else None

    def iteration(self, step, stats, agent, hint, **extra):
        """Stop on a non-finite loss or weight (or beyond ±1e20), else keep them as last good."""
        weights = torch.cat([p.detach().flatten() for p in agent.parameters()])
        if not (np.isfinite(list(stats.values())[:3]).all() and weights.abs().max() <= 1e20):
            raise FloatingPointError(f"non-finite loss at iteration {self.done + 1}; model.pt "
                                     f"keeps the iteration before; try a lower {hint}")  # fmt: skip
        self.state = dict(script=SCRIPT, env_id=self.args.env_id, args=vars(self.args), **extra,
                          agent={k: v.clone() for k, v in agent.state_dict().items()})  # fmt: skip
        self.done, seconds = self.done + 1, time.time() - self.t0
        for name, value in {**stats, "SPS": step / seconds}.items():
            self.writer.add_scalar(f"charts/{name}", value, step)
        if 10 * self.done // self.iterations > self.shown:
            self.shown, frac = 10 * self.done // self.iterations, self.done / self.iterations
            ret = "-" if self.mean() is None else f"{self.mean():.4g}"
            print(f"[{100 * frac:3.0f}%] step {step}  return {ret}  elapsed {seconds:.0f}s  "
                  f"ETA {seconds / frac - seconds:.0f}s", flush=True)  # fmt: skip

    def finish(self):
        """Save model.pt and episodes.csv; a Ctrl-C or SIGTERM meanwhile waits for them."""
        caught, signals = [], (signal.SIGINT, signal.SIGTERM)
        held = [signal.signal(s, lambda *_: caught.append(1)) for s in signals]
        try:
            if self.state is not None:
                header = "global_step,episodic_return"
                csv = lambda rows, f: np.savetxt(f, rows, "%g", ",", header=header, comments="")  # noqa: E731
                save_atomic(self.state, f"{self.out}/model.pt")
                save_atomic(np.reshape(self.episodes, (-1, 2)), f"{self.out}/episodes.csv", csv)
            self.envs.close(), self.writer.close()
        finally:
            for s, handler in zip(signals, held, strict=True):
                signal.signal(s, handler)
        if caught:
            raise KeyboardInterrupt

    def summary(self, algo, step, eval_returns):
        return dict(algo=algo, env_id=self.args.env_id, seed=self.args.seed, global_step=step,
                    solved_at_step=self.solved_at_step, solved_at_s=self.solved_at_s,
                    final_mean_return=self.mean(),
                    eval_mean_return=None if eval_returns is None else np.mean(eval_returns),
                    wall_time_s=time.time() - self.t0, output_dir=self.out)  # fmt: skip


def save_atomic(obj, path, write=torch.save):
    """Write path.tmp, then rename it: the old file stays whole until the new one is."""
    try:
        write(obj, path + ".tmp")
        os.replace(path + ".tmp", path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(path + ".tmp")
        if isinstance(e, OSError | RuntimeError):  # torch.save reports ENOSPC as RuntimeError
            raise OSError(f"cannot write {path}: {brief(e)}") from None
        raise


def evaluate_deterministic(agent, envs, seed, device, obs_stats, clip_obs):
    """Returns of the deterministic policy a = clip(μ_θ(õ)), one episode in each env of
    `envs`, with observations normalised by the *frozen* training statistics obs_stats =
    (μ, σ²), never updated here (None: no normalisation)."""
    low, high = envs.single_action_space.low, envs.single_action_space.high
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(envs.num_envs), np.ones(envs.num_envs, bool)
    while alive.any():
        if obs_stats is not None:
            obs = normalize_obs(obs, *obs_stats, clip_obs)
        with torch.no_grad():
            mean = agent.actor_mean(torch.as_tensor(obs, device=device))
        obs, reward, term, trunc, _ = envs.step(np.clip(mean.cpu().numpy(), low, high))
        returns, alive = returns + reward * alive, alive & ~(term | trunc)
    envs.close()
    return returns


def evaluate_checkpoint(args, action_spaces, agent_class, evaluate):
    """--eval-checkpoint: `evaluate` the saved agent, on the CPU, in --eval-episodes envs."""
    require(args.eval_episodes > 0, "--eval-checkpoint needs --eval-episodes > 0")
    try:
        ckpt = torch.load(args.eval_checkpoint, map_location="cpu", weights_only=True)
        require(ckpt.get("script") == SCRIPT, f"it was not made by {SCRIPT}")
        name = f"runs/{ckpt['env_id']}__{SCRIPT[:-3]}__eval__{args.seed}__{int(time.time())}"
        video_dir = f"{args.output_dir or name}/videos" if args.capture_video else None
        envs = make_envs(ckpt["env_id"], args.eval_episodes, action_spaces, video_dir)
        agent = agent_class(*envs.dims, ckpt["args"]["hidden_size"])
        agent.load_state_dict(ckpt["agent"])
    except Exception as e:  # no file, a truncated zip, another script's, another size, ...
        raise ValueError(f"--eval-checkpoint {args.eval_checkpoint}: {brief(e)}") from None
    returns = evaluate(agent, envs, args.seed + 10_000, "cpu", ckpt)
    return dict(script=SCRIPT, env_id=ckpt["env_id"], checkpoint=args.eval_checkpoint,
                eval_episodes=len(returns), eval_mean_return=np.mean(returns),
                eval_std_return=np.std(returns))  # fmt: skip


def evaluate_normalized(agent, envs, seed, device, ckpt):
    """evaluate_deterministic with the statistics saved in the checkpoint `ckpt`, frozen."""
    normalizer = Normalizer(envs.dims[0], 1, saved := argparse.Namespace(**ckpt["args"]))
    normalizer.load_state_dict(ckpt["normalizer"])
    stats = normalizer.frozen_obs_stats()
    return evaluate_deterministic(agent, envs, seed, device, stats, saved.clip_obs)


def brief(e):
    return " ".join(str(e).split())[:200]  # an exception's message, on one short line


def main(argv=None):
    """train(), then its rounded summary; any failure is one `error:` line, exit non-zero."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError, MemoryError, RuntimeError) as e:
        sys.exit(f"error: {brief(e)}")
    except KeyboardInterrupt:
        print("error: interrupted; files saved before the interrupt are kept", file=sys.stderr)
        sys.exit(130)
    rounded = lambda v: round(float(v), 3) if np.isfinite(v) else None  # noqa: E731 (NaN: no JSON)
    print(json.dumps({k: rounded(v) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    try:
        main()
    finally:  # the files are whole: a signal while Python exits must not print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
