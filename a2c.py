"""A2C, the synchronous advantage actor-critic, on CartPole-v1, in one file.

Mnih et al. 2016 (https://arxiv.org/abs/1602.01783) ran A3C's actors asynchronously; A2C is its
synchronous form (OpenAI baselines): N environments step together, and every `--num-steps` steps
the n-step advantages Â (here by GAE, Schulman et al. 2015; λ = 1 is the paper's n-step return)
feed ONE gradient step on  −Σ log π(a|s) Â + c1 L^VF − c2 S;  the rollout is then thrown away.
A2C is PPO with one epoch and one minibatch, the same optimizer and advantage normalisation
(Huang et al. 2022, https://arxiv.org/abs/2205.09123); tests/test_a2c.py proves it on the files.

Departures from the paper, chosen on the tuning seeds 1..12: lr 3e-3 (SB3: 7e-4) with the
advantages normalised within each rollout (--no-norm-adv: the paper's form) solves in about half
the steps, and the normalisation keeps the larger step from collapsing the policy once solved.
The critic is a separate network (see Agent), and the gradient norm is clipped, as in SB3.

    python a2c.py --output-dir runs/a2c    # RMSprop, as in the paper and SB3; solves CartPole-v1
    python a2c.py --eval-checkpoint runs/a2c/model.pt --capture-video"""

import signal

if __name__ == "__main__":  # until main() runs, Ctrl-C ends the process without a traceback
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import contextlib
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
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

SCRIPT = "a2c.py"  # recorded in checkpoints, checked when one is loaded


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
    total_timesteps: int = flag(100_000, "environment steps to train for, over all envs", "> 0")
    learning_rate: float = flag(3e-3, "step size at the start (see --anneal-lr)", "> 0")
    anneal_lr: bool = flag(False, "decay the learning rate linearly to 0 over training")
    optimizer: str = flag("rmsprop", "RMSprop (the paper, SB3) or Adam", ("rmsprop", "adam"))
    rms_alpha: float = flag(0.99, "RMSprop: decay α of the mean of g²; below 1", "in [0, 1]")
    optimizer_eps: float = flag(1e-5, "ε added to the RMSprop/Adam denominator", "> 0")
    num_envs: int = flag(8, "parallel environments", "> 0")
    num_steps: int = flag(5, "steps per env per rollout: the n of the n-step return", "> 0")
    gamma: float = flag(0.99, "discount factor γ", "in [0, 1]")
    gae_lambda: float = flag(1.0, "GAE λ: 1 is the paper's n-step return; 0 TD(0)", "in [0, 1]")
    norm_adv: bool = flag(True, "normalise the advantages within each rollout")
    ent_coef: float = flag(0.0, "c2: weight of the entropy bonus", ">= 0")
    vf_coef: float = flag(1.0, "c1: weight of the value loss", ">= 0")
    max_grad_norm: float = flag(0.5, "clip the global gradient norm to this", "> 0")
    hidden_size: int = flag(64, "width of the two hidden layers of actor and critic", "> 0")
    eval_episodes: int = flag(10, "greedy episodes to evaluate after training; 0 = none", ">= 0")
    eval_checkpoint: str = flag("", "evaluate this saved model.pt instead of training")
    capture_video: bool = flag(False, "record the evaluation episodes in <output-dir>/videos")


# ---- The math: pure functions of tensors, each checked alone by the tests ----
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


def a2c_loss(logp, logits, values, adv, returns, vf_coef, ent_coef):
    """The actor-critic loss of one rollout, its three terms averaged over the transitions.

    L(θ) = −mean_t[log π_θ(a_t|s_t) Â_t] + c1 · ½ mean_t[(V_θ(s_t) − V_t^targ)²] − c2 S[π_θ]

    Â and V^targ are constants: −∇ of the first term is the policy-gradient estimate
    mean_t ∇log π_θ(a_t|s_t) Â_t, the score-function estimator with the critic as baseline.
    L^VF is ppo_cartpole.py's halved regression. Returns (L, policy term, L^VF, S)."""
    pg_loss = -(logp * adv.detach()).mean()
    v_loss = 0.5 * (values - returns.detach()).pow(2).mean()
    entropy = categorical_entropy(logits)
    return pg_loss + vf_coef * v_loss - ent_coef * entropy, pg_loss, v_loss, entropy


def categorical_entropy(logits):
    """S[π_θ](s) = −Σ_a π(a|s) log π(a|s), averaged over the batch."""
    logp = F.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def explained_variance(pred, target):
    """1 − Var[target − pred] / Var[target]: 1 for a perfect critic, ≤ 0 for a useless one."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


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


# Separate networks, as in SB3's MlpPolicy (the paper shared a trunk of costly convolutions).
class Agent(nn.Module):
    """Separate actor and critic MLPs (tanh). Sharing a trunk would couple the two losses."""

    def __init__(self, obs_dim, n_actions, hidden=64):
        super().__init__()
        self.actor = mlp(obs_dim, n_actions, hidden, 0.01)
        self.critic = mlp(obs_dim, 1, hidden, 1.0)

    def value(self, obs):
        return self.critic(obs).squeeze(-1)

    def sample(self, obs):  # a ~ π_θ(·|s)
        return torch.multinomial(self.actor(obs).softmax(-1), 1).squeeze(-1)

    def evaluate(self, obs, action):
        """log π_θ(a|s), the logits and V(s) for given actions (any leading shape)."""
        logits = self.actor(obs)
        logp = F.log_softmax(logits, -1).gather(-1, action[..., None]).squeeze(-1)
        return logp, logits, self.value(obs)


def make_optimizer(params, args):
    """RMSprop as in the A2C paper and SB3 (α = 0.99, ε = 1e-5, no momentum), or Adam.

    v ← α v + (1 − α) g²;  θ ← θ − lr g / (√v + ε). PyTorch adds ε outside the square root
    (TensorFlow, the paper's framework, inside); SB3's MlpPolicy uses PyTorch's too."""
    lr, eps = args.learning_rate, args.optimizer_eps
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, eps=eps)
    return torch.optim.RMSprop(params, lr=lr, alpha=args.rms_alpha, eps=eps)


# ---- Rollout, update, and the training loop ----
@torch.no_grad()
def rollout(agent, envs, obs, prev_done, num_steps, device):
    """num_steps steps in each env under π_θold: (batch of [T, N] tensors, obs, prev_done).
    "obs" and "value" have T + 1 rows, the last for the observation after the final step;
    prev_done marks the envs that ended an episode in their last step (they reset next)."""
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
        action[t] = agent.sample(torch.as_tensor(obs, device=device))
        obs, reward[t], terminated[t], truncated, _ = envs.step(action[t].cpu().numpy())
        done[t] = prev_done = terminated[t].astype(bool) | truncated
    obs_buf[T] = obs
    # log π_θold and V in one batched pass; V of the row after a truncation is gae()'s bootstrap.
    obs_all = torch.as_tensor(obs_buf, device=device)
    logp = agent.evaluate(obs_all[:-1], action)[0]
    value = agent.value(obs_all)
    arrays = dict(reward=reward, terminated=terminated, done=done, valid=valid > 0)
    batch = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    batch.update(obs=obs_all, action=action, logp=logp, value=value)
    return batch, obs, prev_done


def valid_transitions(b, adv):
    """The rollout's real transitions (autoreset steps dropped) as flat tensors, with Â and
    the λ-return V^targ = Â + V(s), the critic's regression target."""
    flat = dict(obs=b["obs"][:-1], action=b["action"], logp=b["logp"], adv=adv,
                ret=adv + b["value"][:-1], value=b["value"][:-1])  # fmt: skip
    return {k: v.flatten(0, 1)[b["valid"].flatten()] for k, v in flat.items()}


def a2c_update(agent, optimizer, t, args):
    """One gradient step on the transitions `t` of one rollout (from valid_transitions),
    minimising a2c_loss; the rollout is then discarded. Returns the loss terms."""
    adv = t["adv"]
    if args.norm_adv and len(adv) > 1:  # Â ← (Â − mean Â) / (std Â + 1e-8) over the rollout
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    logp, logits, v = agent.evaluate(t["obs"], t["action"])
    loss, pg_loss, v_loss, entropy = a2c_loss(
        logp, logits, v, adv, t["ret"], args.vf_coef, args.ent_coef
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    return dict(zip(("policy_loss", "value_loss", "entropy"),
                    torch.stack([pg_loss, v_loss, entropy]).tolist(), strict=True))  # fmt: skip


def train(args):
    """rollout → advantages → one update → log, for --total-timesteps steps."""
    if args.eval_checkpoint:  # no training: the saved agent's greedy returns
        return evaluate_checkpoint(args, (gym.spaces.Discrete,), Agent, evaluate_greedy)
    require(args.rms_alpha < 1, "--rms-alpha must be below 1: at 1 the mean of g² stays 0")
    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    run = Run(args, (gym.spaces.Discrete,), num_iterations)  # seeds, envs, files, logging
    envs, device = run.envs, run.device
    agent = Agent(*envs.dims, args.hidden_size).to(device)
    optimizer = make_optimizer(agent.parameters(), args)
    obs, _ = envs.reset(seed=args.seed)
    prev_done, ep_return = np.zeros(args.num_envs, bool), np.zeros(args.num_envs)
    global_step, gamma, lam = 0, args.gamma, args.gae_lambda
    try:
        for iteration in range(1, num_iterations + 1):
            frac = 1.0 - (iteration - 1) / num_iterations if args.anneal_lr else 1.0
            optimizer.param_groups[0]["lr"] = lr = frac * args.learning_rate

            b, obs, prev_done = rollout(agent, envs, obs, prev_done, args.num_steps, device)
            global_step = run.add_rollout(ep_return, b["reward"], b["done"], global_step)
            adv = gae(b["reward"], b["value"], b["terminated"], b["done"], gamma, lam)
            t = valid_transitions(b, adv)
            stats = a2c_update(agent, optimizer, t, args)
            stats.update(explained_variance=explained_variance(t["value"], t["ret"]), lr=lr)
            run.iteration(global_step, stats, agent, "--learning-rate")
    finally:  # on success, a non-finite loss, Ctrl-C and SIGTERM alike
        run.finish()
    returns = run.eval_envs and evaluate_greedy(agent, run.eval_envs, args.seed + 10_000, device)
    return run.summary("a2c", global_step, returns)


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
