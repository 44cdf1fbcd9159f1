"""A2C, the synchronous advantage actor-critic, on CartPole-v1, in one file.

Mnih et al. 2016 (https://arxiv.org/abs/1602.01783) ran A3C's actors asynchronously; A2C is
its synchronous form (OpenAI baselines): N environments step together, every `--num-steps`
steps the n-step advantages Â (here by GAE, Schulman et al. 2015; λ = 1 is the paper's n-step
return) feed ONE gradient step on  −Σ log π(a|s) Â + c1 L^VF − c2 S,  and the rollout is
thrown away. Read it beside ppo_cartpole.py: A2C is PPO with one epoch, one minibatch and no
advantage normalisation (Huang et al. 2022, https://arxiv.org/abs/2205.09123), and
tests/test_a2c.py proves that identity on these two files.

Departures from the paper: RMSprop keeps one set of statistics (not shared across threads),
the critic is a separate network (see Agent), and the gradient norm is clipped (as in SB3).

    python a2c.py                       # RMSprop, as in the paper and in SB3; solves CartPole-v1
    python a2c.py --optimizer adam
    python a2c.py --help
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
    total_timesteps: int = flag(200_000, "environment steps to train for, over all envs")
    learning_rate: float = flag(7e-4, "optimizer step size at the start (see --anneal-lr)")
    anneal_lr: bool = flag(False, "decay the learning rate linearly to 0 over training")
    optimizer: str = flag("rmsprop", "rmsprop (the A2C paper, SB3) or adam")
    rms_alpha: float = flag(0.99, "RMSprop: decay α of the running mean of squared gradients")
    optimizer_eps: float = flag(1e-5, "ε added to the RMSprop/Adam denominator")
    num_envs: int = flag(8, "parallel environments")
    num_steps: int = flag(5, "steps per environment per rollout: the n of the n-step return")
    gamma: float = flag(0.99, "discount factor γ")
    gae_lambda: float = flag(1.0, "GAE λ: 1 is the n-step return of the paper, 0 is one-step TD")
    norm_adv: bool = flag(False, "normalise the advantages within each rollout")
    ent_coef: float = flag(0.0, "c2: weight of the entropy bonus")
    vf_coef: float = flag(1.0, "c1: weight of the value loss L^VF = ½ (V − V^targ)²")
    max_grad_norm: float = flag(0.5, "clip the global gradient norm to this")
    hidden_size: int = flag(64, "width of the two hidden layers of actor and critic")
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


def check_a2c_args(args):
    """Reject settings that would fail later with an obscure error, saying what to fix."""
    sizes = ("total_timesteps", "num_envs", "num_steps", "hidden_size")
    for name in (*sizes, "learning_rate", "max_grad_norm", "optimizer_eps"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive")
    if args.optimizer not in ("rmsprop", "adam"):
        raise ValueError(f"--optimizer must be rmsprop or adam, not {args.optimizer!r}")
    if not 0 <= args.rms_alpha < 1:
        raise ValueError("--rms-alpha must lie in [0, 1)")
    if not 0 <= args.gamma <= 1 or not 0 <= args.gae_lambda <= 1:
        raise ValueError("--gamma and --gae-lambda must lie in [0, 1]")


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


def a2c_loss(logp, logits, values, adv, returns, vf_coef, ent_coef):
    """The actor-critic loss of one rollout, its three terms averaged over the transitions.

    L(θ) = −mean_t[log π_θ(a_t|s_t) Â_t] + c1 · ½ mean_t[(V_θ(s_t) − V_t^targ)²] − c2 S[π_θ]

    Â and V^targ are constants: −∇ of the first term is the policy-gradient estimate
    mean_t ∇log π_θ(a_t|s_t) Â_t. Returns (L, policy term, L^VF, S).
    """
    # −mean(log π(a_t|s_t) Â_t): the score-function estimator with the critic as baseline.
    pg_loss = -(logp * adv.detach()).mean()
    # L^VF = ½ mean (V(s_t) − V_t^targ)², the same halved regression as ppo_cartpole.py.
    v_loss = 0.5 * (values - returns.detach()).pow(2).mean()
    entropy = categorical_entropy(logits)
    # L = −L^PG + c1 L^VF − c2 S
    return pg_loss + vf_coef * v_loss - ent_coef * entropy, pg_loss, v_loss, entropy


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


# The paper shares a trunk between actor and critic (its Atari nets are convolutional and
# costly); on a 4-number observation a trunk saves nothing, and sharing it makes c1 trade the
# critic's regression against the policy gradient. Separate networks, as in SB3's MlpPolicy
# and ppo_cartpole.py, keep the two losses apart and make this class PPO's, verbatim.
class Agent(nn.Module):
    """Separate actor and critic MLPs (tanh). Sharing a trunk would couple the two losses."""

    def __init__(self, obs_dim, n_actions, hidden=64):
        super().__init__()

        def mlp(out, std):
            return nn.Sequential(
                layer_init(nn.Linear(obs_dim, hidden)),
                nn.Tanh(),
                layer_init(nn.Linear(hidden, hidden)),
                nn.Tanh(),
                layer_init(nn.Linear(hidden, out), std),
            )

        self.actor = mlp(n_actions, 0.01)
        self.critic = mlp(1, 1.0)

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


def make_optimizer(params, args):
    """RMSprop as in the A2C paper and SB3 (α = 0.99, ε = 1e-5, no momentum), or Adam."""
    if args.optimizer == "adam":
        return torch.optim.Adam(params, lr=args.learning_rate, eps=args.optimizer_eps)
    # v ← α v + (1 − α) g²;  θ ← θ − lr g / (√v + ε). PyTorch adds ε outside the square
    # root (TensorFlow, the paper's framework, inside); SB3's MlpPolicy uses PyTorch's too.
    return torch.optim.RMSprop(
        params, lr=args.learning_rate, alpha=args.rms_alpha, eps=args.optimizer_eps
    )


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


def make_envs(env_id, num_envs, seed):
    """A Gymnasium >= 1.0 vector env with next-step autoreset: the numpy-vectorised version
    when the environment has one (CartPole does), else one copy per env in this process."""
    try:
        spec = gym.spec(env_id)
        mode = "vector_entry_point" if spec.vector_entry_point else "sync"
        envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode)
    except gym.error.Error as e:
        raise ValueError(f"cannot make --env-id {env_id!r}: {e}") from None
    if not isinstance(envs.single_action_space, gym.spaces.Discrete):
        raise ValueError(f"--env-id {env_id} has {envs.single_action_space}; need Discrete")
    if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
        raise ValueError(f"--env-id {env_id} does not autoreset in the next step")
    envs.action_space.seed(seed)
    return envs


def evaluate_greedy(agent, env_id, episodes, seed, device):
    """Mean return of the greedy policy, one episode in each of `episodes` parallel envs
    (taking the first `episodes` finishers of fewer envs would favour short episodes)."""
    envs = make_envs(env_id, episodes, seed)
    obs, _ = envs.reset(seed=seed)
    returns, alive = np.zeros(episodes), np.ones(episodes, bool)
    while alive.any():
        with torch.no_grad():
            action = agent.actor(torch.as_tensor(obs, device=device)).argmax(-1)
        obs, reward, term, trunc, _ = envs.step(action.cpu().numpy())
        returns += reward * alive
        alive &= ~(term | trunc)
    envs.close()
    return float(returns.mean())


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


def a2c_update(agent, optimizer, b, args):
    """One gradient step on the rollout `b` (from rollout()): GAE advantages, then a2c_loss
    over the real transitions (the autoreset steps are dropped). Returns the loss terms."""
    adv = gae(b["reward"], b["value"], b["terminated"], b["done"], args.gamma, args.gae_lambda)
    # V^targ = Â + V(s): with λ = 1 the n-step return Σ_k γ^k r_{t+k} + γ^n V(s_{t+n}).
    ret = adv + b["value"][:-1]
    keep = b["valid"].flatten()
    b_obs, b_act = b["obs"][:-1].flatten(0, 1)[keep], b["action"].flatten()[keep]
    b_adv, b_ret = adv.flatten()[keep], ret.flatten()[keep]
    if args.norm_adv and len(b_adv) > 1:
        b_adv = (b_adv - b_adv.mean()) / (b_adv.std() + 1e-8)
    logp, logits, v = agent.evaluate(b_obs, b_act)
    loss, pg_loss, v_loss, entropy = a2c_loss(
        logp, logits, v, b_adv, b_ret, args.vf_coef, args.ent_coef
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
    optimizer.step()
    ev = explained_variance(b["value"][:-1].flatten()[keep], b_ret)
    return torch.stack([pg_loss, v_loss, entropy]).tolist() + [ev]


def train(args):
    check_a2c_args(args)
    start = time.time()
    run_name = f"{args.env_id}__a2c__{args.seed}__{int(start)}"
    out = args.output_dir or os.path.join("runs", run_name)
    os.makedirs(out, exist_ok=True)
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # tiny networks: threads cost more than they give
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")

    envs = make_envs(args.env_id, args.num_envs, args.seed)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    agent = Agent(obs_dim, envs.single_action_space.n, args.hidden_size).to(device)
    optimizer = make_optimizer(agent.parameters(), args)

    num_iterations = max(1, args.total_timesteps // (args.num_steps * args.num_envs))
    # A2C's iterations are tiny (40 steps by default): log the losses ~200 times, not each.
    log_every = max(1, num_iterations // 200)
    obs, _ = envs.reset(seed=args.seed)
    prev_done = np.zeros(args.num_envs, bool)
    ep_return = np.zeros(args.num_envs)
    recent = deque(maxlen=20)
    episodes = []  # (global_step, return) of every finished training episode
    solved_at_step = solved_at_s = None
    global_step = 0
    last_good = copy.deepcopy(agent.state_dict())
    t0 = time.time()
    print(f"training {args.env_id} for {args.total_timesteps} steps; logs in {out}")

    try:
        for iteration in range(1, num_iterations + 1):
            frac = 1.0 - (iteration - 1) / num_iterations
            lr = frac * args.learning_rate if args.anneal_lr else args.learning_rate
            optimizer.param_groups[0]["lr"] = lr

            b, obs, prev_done = rollout(agent, envs, obs, prev_done, args.num_steps, device)
            for reward, done in zip(
                b["reward"].cpu().numpy(), b["done"].cpu().numpy().astype(bool), strict=True
            ):
                global_step += args.num_envs
                ep_return += reward
                for ret in ep_return[done]:
                    episodes.append((global_step, ret))
                    recent.append(ret)
                    print(f"global_step={global_step} episodic_return={ret:.0f}")
                    writer.add_scalar("charts/episodic_return", ret, global_step)
                    if solved_at_step is None and len(recent) == 20 and np.mean(recent) >= 475:
                        solved_at_step, solved_at_s = global_step, time.time() - t0
                        print(f"solved at step {global_step} after {solved_at_s:.1f}s")
                ep_return[done] = 0

            # ---- Update: one gradient step on this rollout, then it is discarded -------
            pg_l, v_l, ent, ev = a2c_update(agent, optimizer, b, args)
            # A NaN anywhere in the losses ends up in these numbers and in the parameters.
            params = torch.cat([p.detach().flatten() for p in agent.parameters()])
            if not (np.isfinite([pg_l, v_l, ent]).all() and torch.isfinite(params).all()):
                raise FloatingPointError(
                    f"non-finite loss at iteration {iteration}; the checkpoint keeps the "
                    "parameters of the iteration before; try a lower --learning-rate"
                )
            last_good = copy.deepcopy(agent.state_dict())
            sps = int(global_step / (time.time() - t0))
            if iteration % log_every == 0:
                for name, value in [
                    ("losses/policy_loss", pg_l),
                    ("losses/value_loss", v_l),
                    ("losses/entropy", ent),
                    ("losses/explained_variance", ev),
                    ("charts/learning_rate", lr),
                    ("charts/SPS", sps),
                    ("charts/progress", global_step / args.total_timesteps),
                ]:
                    writer.add_scalar(name, value, global_step)
            if iteration % max(1, num_iterations // 10) == 0:
                mean = np.mean(recent) if recent else float("nan")
                print(
                    f"[{100 * iteration // num_iterations:3d}%] step {global_step} "
                    f"mean_return(last 20)={mean:.1f} entropy={ent:.3f} SPS={sps}"
                )
    finally:
        # Runs on success, on a non-finite loss and on Ctrl-C alike.
        save_atomic(
            {"agent": last_good, "args": dataclasses.asdict(args)},
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

    eval_return = None
    if args.eval_episodes > 0:
        eval_return = evaluate_greedy(
            agent, args.env_id, args.eval_episodes, args.seed + 10_000, device
        )
        print(
            f"eval: mean return of the greedy policy over {args.eval_episodes} episodes "
            f"= {eval_return:.1f}"
        )
    return {
        "algo": "a2c",
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
