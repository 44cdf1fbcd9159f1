"""Where the time of ppo_continuous.py and trpo_continuous.py goes on a MuJoCo task: each
phase of one training iteration (2,048 env steps) timed on its own with perf_counter, no
profiler (cProfile inflates the Python-heavy phases), one torch thread, the settings of
bench_ppo_continuous.py and bench_trpo_continuous.py; the mean over --iterations after one
warm-up iteration. Also the env's own step alone (a zero action, so that it stands and
rarely resets, like a policy that has learned to), through the same vector env.

    python benchmarks/time_phases.py --env-id Hopper-v5
"""

import argparse
import os
import sys
import time

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench_trpo_continuous as btc  # noqa: E402  (its translated Zoo flags)

import ppo_continuous as pc  # noqa: E402
import trpo_continuous as tc  # noqa: E402


def timed_iterations(module, args, update, iterations):
    """Seconds per phase (rollout, GAE + flattening, update) of `iterations` iterations."""
    torch.manual_seed(1)
    envs = module.make_envs(args.env_id, args.num_envs, (gym.spaces.Box,))
    dims = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent = module.GaussianAgent(*dims, args.hidden_size, args.init_log_std)
    normalizer = module.Normalizer(dims[0], args.num_envs, args)
    obs = normalizer.observe(envs.reset(seed=1)[0])
    prev_done, cpu, total = np.zeros(args.num_envs, bool), torch.device("cpu"), np.zeros(3)
    step = update(agent)
    for i in range(iterations + 1):
        t0 = time.perf_counter()
        b, obs, prev_done = module.rollout_normalized(
            agent, envs, obs, prev_done, args.num_steps, normalizer, cpu
        )
        t1 = time.perf_counter()
        adv = module.gae(
            b["reward"], b["value"], b["terminated"], b["done"], args.gamma, args.gae_lambda
        )
        t = module.valid_transitions(b, adv)
        t2 = time.perf_counter()
        step(t)
        if i:  # the first iteration is the warm-up
            total += [t1 - t0, t2 - t1, time.perf_counter() - t2]
    envs.close()
    return total / iterations


def ppo_update(args):
    def make(agent):
        opt = torch.optim.Adam(agent.parameters(), lr=args.learning_rate, eps=1e-5, fused=True)
        entropy = lambda log_std: pc.gaussian_entropy(log_std).mean()  # noqa: E731
        return lambda t: pc.ppo_epochs(agent, opt, t, args, 0.0, entropy)

    return make


def trpo_update(args):
    def make(agent):
        opt = torch.optim.Adam(agent.critic.parameters(), lr=args.learning_rate)

        def step(t):
            adv = (t["adv"] - t["adv"].mean()) / (t["adv"].std() + 1e-8)
            actor = [*agent.actor_mean.parameters(), agent.actor_log_std]
            tc.trpo_step(actor, lambda o: tc.gaussian_policy(agent, o), tc.gaussian_log_prob,
                         tc.gaussian_kl, t["obs"], t["action"], adv, args)  # fmt: skip
            tc.fit_critic(agent.critic, opt, t["obs"], t["ret"], args.critic_epochs,
                          args.critic_minibatch_size)  # fmt: skip

        return step

    return make


def env_only(env_id, num_envs, steps=2048):
    envs = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="sync")
    envs.reset(seed=0)
    action = np.zeros((num_envs, *envs.single_action_space.shape), np.float32)
    t0 = time.perf_counter()
    for _ in range(steps // num_envs):
        envs.step(action)
    envs.close()
    return time.perf_counter() - t0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env-id", default="Hopper-v5", choices=list(btc.MAX_KL))
    p.add_argument("--iterations", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(1)
    ppo_args = pc.parse_args(["--env-id", a.env_id])
    trpo_args = tc.parse_args(["--env-id", a.env_id, f"--max-kl={btc.MAX_KL[a.env_id]}",
                               *btc.MUJOCO_FLAGS])  # fmt: skip
    print(f"{a.env_id}, s per {ppo_args.num_envs * ppo_args.num_steps:,} env steps, load "
          f"average {os.getloadavg()[0]:.1f}")  # fmt: skip
    for module, args, update in [(pc, ppo_args, ppo_update), (tc, trpo_args, trpo_update)]:
        r, g, u = timed_iterations(module, args, update(args), a.iterations)
        env = env_only(a.env_id, args.num_envs, args.num_envs * args.num_steps)
        print(f"{module.__name__}: rollout {r:.2f} (env step alone {env:.2f}), "
              f"GAE + flatten {g:.2f}, update {u:.2f}, total {r + g + u:.2f}")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.1f}")
