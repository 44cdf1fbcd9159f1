"""REINFORCE (Monte Carlo policy gradient) with reward-to-go and a baseline, on CartPole-v1.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist
reinforcement learning"; the policy gradient theorem as in Sutton et al. 2000. Each update
uses exactly one complete episode per environment, all collected with the current policy.

    python reinforce.py --output-dir runs/reinforce          # value baseline: solves CartPole-v1
    python reinforce.py --baseline none --no-normalize-advantages   # textbook REINFORCE
    python reinforce.py --eval-checkpoint runs/reinforce/model.pt --capture-video"""

import signal

if __name__ == "__main__":  # until main() runs, Ctrl-C ends the process without a traceback
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import sys
import threading
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
from torch.distributions import Categorical
from torch.utils.tensorboard import SummaryWriter

SCRIPT = "reinforce.py"  # recorded in checkpoints, checked when one is loaded


def flag(default, help, rule=None):
    """A field of Args that is also a --flag; parse_args checks its rule (see RULES)."""
    return dataclasses.field(default=default, metadata=dict(help=help, rule=rule))


@dataclasses.dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the environments", "in [0, 2^32)")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and model.pt go here; default runs/<env>__<script>__...")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
    env_id: str = flag("CartPole-v1", "a Gymnasium environment with a Discrete action space")
    total_timesteps: int = flag(300_000, "environment steps; the last batch may overrun", "> 0")
    learning_rate: float = flag(1e-2, "Adam learning rate of the policy", "> 0")
    value_learning_rate: float = flag(1e-2, "Adam learning rate of V(s) (--baseline value)", "> 0")
    gamma: float = flag(0.99, "discount factor of the reward-to-go", "in [0, 1]")
    num_envs: int = flag(8, "parallel environments = complete episodes per update", "> 0")
    baseline: str = flag("value", "b(s_t): 0, the batch mean of G_t, or V(s_t)",
                         ("none", "mean", "value"))  # fmt: skip
    normalize_advantages: bool = flag(True, "scale the advantages of each batch to mean 0, std 1")
    bootstrap_truncated: bool = flag(True, "--baseline value: a time-limit cut adds γ^k V(s_final)")
    ent_coef: float = flag(0.0, "weight of the entropy bonus; 0 turns it off", ">= 0")
    max_grad_norm: float = flag(0.5, "clip each network's gradient norm to this; 0 = off", ">= 0")
    hidden_size: int = flag(64, "width of the two hidden layers of the policy and of V(s)", "> 0")
    eval_episodes: int = flag(10, "greedy episodes to evaluate after training; 0 = none", ">= 0")
    eval_checkpoint: str = flag("", "evaluate this saved model.pt instead of training")
    capture_video: bool = flag(False, "record the evaluation episodes in <output-dir>/videos")


# ---- The math: pure functions of tensors, each checked alone by the tests ----
def reinforce_loss(logprob, advantages):
    """Surrogate whose gradient is the REINFORCE estimate, averaged over all steps:

        L(θ) = −mean_t [ log πθ(a_t|s_t) · Â_t ],   −∇θ L = mean_t ∇θ log πθ(a_t|s_t) Â_t.

    Â_t is a constant here (no gradient flows through the baseline). This is the policy
    gradient theorem (Sutton et al. 2000) in its Monte Carlo form (Williams 1992):
        ∇θ J(θ) = E_τ~πθ [ Σ_t ∇θ log πθ(a_t|s_t) · G_t ],   G_t = Σ_k γ^k r_{t+k+1}.
    Reward-to-go: an action cannot influence rewards that came before it (causality). For
    k < t, r_{k+1} is fixed once the history up to s_t is, and a_t ~ π(·|s_t) is drawn after
    it, so E[∇ log π(a_t|s_t) · r_{k+1}] = E[r_{k+1} · E_{a_t~π}[∇ log π(a_t|s_t)]] = 0, as
    Σ_a π ∇ log π = ∇ Σ_a π = ∇1 = 0. The whole-episode return can thus be replaced by G_t:
    that drops terms of mean zero, and with them their variance.
    Baseline: for any b(s_t) that does not depend on a_t, E[∇ log π(a_t|s_t) · b(s_t)] = 0 by
    the same identity, so Â_t = G_t − b(s_t) is an unbiased weight; b ≈ V(s_t) = E[G_t|s_t]
    makes it small, which lowers the variance.
    With γ < 1 we drop the γ^t factor the discounted theorem puts in front of each term, as
    nearly all implementations do: the result is not exactly ∇ of the discounted objective
    (Nota & Thomas 2020, "Is the policy gradient a gradient?"). With γ = 1 it is exact."""
    return -(logprob * advantages.detach()).mean()


def reward_to_go(rewards, ends, bootstrap, gamma):
    """Discounted reward-to-go along the time axis (dim 0), restarting at episode ends:

        G_t = r_{t+1} + γ G_{t+1}             inside an episode,
        G_t = r_{t+1} + γ bootstrap_t         on the last step of an episode (ends_t = 1).

    rewards[t] is the reward that followed the action at t; bootstrap is 0 for a terminated
    episode (and for pure Monte Carlo), V(s_final) for a time-limit-truncated one."""
    returns, next_g = torch.zeros_like(rewards), torch.zeros_like(rewards[0])  # G_{t+1}
    for t in reversed(range(rewards.shape[0])):
        returns[t] = next_g = rewards[t] + gamma * torch.where(ends[t], bootstrap[t], next_g)
    return returns


def advantage_estimate(returns, values, baseline, normalize):
    """Â_t = G_t − b_t, with b_t = 0 (none), mean(G) over the batch (mean) or V(s_t) (value);
    then optionally Â ← (Â − mean Â) / (std Â + 1e-8).

    V must come from parameters fitted before this batch, so that b_t does not depend on a_t.
    The batch mean contains G_t itself: its bias is O(1/batch size), negligible here; and
    normalisation subtracts the mean anyway, so with it "mean" and "none" coincide.
    Normalisation is a per-batch change of step size that keeps the sign of every weight
    relative to the batch mean (Schulman et al.'s implementations; Andrychowicz et al. 2021)."""
    adv = returns - {"none": 0.0, "mean": returns.mean(), "value": values}[baseline]
    if normalize and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return adv


def value_regression_loss(values, returns):
    """Regression of the baseline on the returns: L_V = ½ mean_t (V(s_t) − G_t)²."""
    return 0.5 * (values - returns).pow(2).mean()


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


def make_agent(obs_dim, n_actions, hidden=64):
    """The policy π_θ (actor) and the baseline V(s) (critic), separate tanh MLPs: sharing a
    trunk would couple the two losses."""
    actor, critic = mlp(obs_dim, n_actions, hidden, 0.01), mlp(obs_dim, 1, hidden, 1.0)
    return nn.ModuleDict(dict(actor=actor, critic=critic))


# ---- Episodes, update, and the training loop ----
def collect_episodes(envs, policy, device, seed=None):
    """Play exactly one episode in every env, from a fresh reset, with the current policy.

    One episode per env makes the batch an i.i.d. sample of episodes (keeping every episode
    that ends before some deadline would favour short ones), and every episode is complete
    and on-policy. An env whose episode is over is still stepped by the vector env, but
    nothing it returns is kept: its autoreset step and next episode never enter the batch,
    so the autoreset mode does not matter here. Returns [T, N] tensors (obs: [T, N, obs_dim]);
    `alive` marks the steps that belong to an episode; `truncated` the last steps of episodes
    cut by the time limit that did not also terminate."""
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
        alive, obs = alive & ~end, next_obs
    keys = ("obs", "actions", "rewards", "ends", "truncated", "final_obs", "alive")
    batch = {k: torch.as_tensor(np.stack(v), device=device)
             for k, v in zip(keys, zip(*steps, strict=True), strict=True)}  # fmt: skip
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


def reinforce_update(agent, optimizer, obs, actions, returns, args):
    """One gradient step on L = −mean_t log π(a_t|s_t) Â_t − c_ent S (+ L_V with --baseline
    value) over all live steps of the batch. Returns the statistics to log."""
    values = agent.critic(obs).squeeze(-1) if args.baseline == "value" else None
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
    return dict(policy_loss=pg_loss.item(), value_loss=v_loss.item(), entropy=entropy.item(),
                policy_grad_norm=float(grad_norm))  # fmt: skip


def log_episodes(run, batch, step):
    """Hand the batch's episodes to Run in finishing order, one row per time step: the envs
    alive then, each episode's whole return on its last step. `step` counts live transitions
    only, i.e. exactly the steps a one-env implementation would take for the same episodes."""
    returns = batch["rewards"].sum(0)
    for alive, ends in zip(batch["alive"], batch["ends"], strict=True):
        row = (returns * ends)[alive]
        step = run.add_rollout(np.zeros(len(row)), row[None], ends[alive][None], step)
    return step


def train(args):
    """collect episodes → returns → advantages → update → log, until --total-timesteps."""
    if args.eval_checkpoint:  # no training: the saved agent's greedy returns
        return evaluate_checkpoint(args, (gym.spaces.Discrete,), make_agent, evaluate_greedy)
    run = Run(args, (gym.spaces.Discrete,), 1)  # seeds, envs, files, logging
    envs, device = run.envs, run.device
    agent = make_agent(*envs.dims, args.hidden_size).to(device)
    optimizer = torch.optim.Adam([
        {"params": agent.actor.parameters(), "lr": args.learning_rate},
        {"params": agent.critic.parameters(), "lr": args.value_learning_rate},
    ])  # fmt: skip
    critic = agent.critic if args.baseline == "value" and args.bootstrap_truncated else None
    global_step, iteration, simulated = 0, 0, 0
    try:
        while global_step < args.total_timesteps:
            iteration += 1
            seed = args.seed if iteration == 1 else None
            batch = collect_episodes(envs, agent.actor, device, seed)
            global_step = log_episodes(run, batch, global_step)
            simulated += batch["alive"].numel()  # including the idle steps of envs already done

            returns = episode_returns(batch, critic, args.gamma)
            obs, actions = batch["obs"][batch["alive"]], batch["actions"][batch["alive"]]
            stats = reinforce_update(agent, optimizer, obs, actions, returns, args)
            stats.update(episodes_per_update=int(batch["ends"].sum()))
            # Iterations differ in length: Run's progress becomes the fraction of steps done.
            run.iterations = (run.done + 1) / min(global_step / args.total_timesteps, 1)
            hint = "--learning-rate or --value-learning-rate"
            opt = copy.deepcopy(optimizer.state_dict())
            run.iteration(global_step, stats, agent, hint, optimizer=opt, iteration=iteration)
    finally:  # on success, a non-finite loss, Ctrl-C and SIGTERM alike
        run.finish()
    returns = run.eval_envs and evaluate_greedy(agent, run.eval_envs, args.seed + 10_000, device)
    return run.summary("reinforce", global_step, returns) | dict(env_steps_simulated=simulated)


# ==== Plumbing: command line, envs, files, evaluation. The algorithm ends above. ====
# Each piece is the same text in every script that has it (tests/test_shared_code.py).
RULES = {None: lambda v: True, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
         "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 2^32)": lambda v: 0 <= v < 2**32}  # fmt: skip


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


def evaluate_greedy(agent, envs, seed, device, ckpt=None):
    """Returns of a = argmax_a π(a|s), one episode per env (first finishers favour the short).
    Nothing in a checkpoint besides the weights is needed."""
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(envs.num_envs), np.ones(envs.num_envs, bool)
    while alive.any():
        with torch.no_grad():
            action = agent.actor(torch.as_tensor(obs, device=device)).argmax(-1)
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
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
