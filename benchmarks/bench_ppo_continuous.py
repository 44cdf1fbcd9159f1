"""Benchmark ppo_continuous.py against Stable-Baselines3 PPO on Pendulum-v1 or MuJoCo, same
machine, same run, same rules (harness.continuous_benchmark). Pendulum-v1: steps and wall
seconds until the mean return of the last 20 finished training episodes reaches −200.
HalfCheetah-v5 and Hopper-v5 (`--env-id`): the last-20 training mean at 1M steps, a 10-episode
deterministic evaluation of the final policy with its observation statistics frozen, and the
training seconds.

Pendulum: ours runs with its documented set (ppo_continuous.PENDULUM); SB3 with the RL Zoo's
(rl_zoo3 hyperparams/ppo.yml: 4 envs × 1024 steps, batch 64, 10 epochs, γ 0.9, λ 0.95, lr
1e-3, clip 0.2, gSDE with sample frequency 4, no normalisation). MuJoCo: ours runs with its
defaults (CleanRL's settings, log σ₀ = −1), SB3 with the Zoo's tuned HalfCheetah and Hopper
sets (tuned on v3: VecNormalize with the algorithm's γ, 1 env × 512 steps, ReLU 256-256
networks, log σ₀ = −2; the rest per env in SB3_MUJOCO). Both to the full budget, one process
per seed, CPU, one torch thread, alternating seed by seed on the held-out seeds (1001..1010
on Pendulum, 1001..1003 on MuJoCo: about 15–25 minutes a run here).

    python benchmarks/bench_ppo_continuous.py
    python benchmarks/bench_ppo_continuous.py --seeds 1001 --only ppo_continuous.py --no-save
    python benchmarks/bench_ppo_continuous.py --env-id Hopper-v5
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

import ppo_continuous  # noqa: E402  (for its PENDULUM set only)

# The documented Pendulum-v1 set of ppo_continuous.py, as a command line.
PENDULUM_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in ppo_continuous.PENDULUM.items()]
assert ppo_continuous.PENDULUM["total_timesteps"] == harness.PENDULUM_BUDGET

SB3_PENDULUM = r"""
from stable_baselines3 import PPO
t_start = time.time()
env = make_vec_env("Pendulum-v1", n_envs=4, seed=seed)
model = PPO("MlpPolicy", env, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10,
            ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, use_sde=True,
            sde_sample_freq=4, seed=seed, device="cpu", verbose=0)
learn_and_report(model, t_start)
"""

# RL Zoo hyperparams/ppo.yml, HalfCheetah-v3 and Hopper-v3 (the Zoo's newest tuned MuJoCo sets).
SB3_MUJOCO = {
    "HalfCheetah-v5": dict(batch_size=64, gamma=0.98, learning_rate=2.0633e-05,
                           ent_coef=0.000401762, clip_range=0.1, n_epochs=20, gae_lambda=0.92,
                           max_grad_norm=0.8, vf_coef=0.58096),
    "Hopper-v5": dict(batch_size=32, gamma=0.999, learning_rate=9.80828e-05,
                      ent_coef=0.00229519, clip_range=0.2, n_epochs=5, gae_lambda=0.99,
                      max_grad_norm=0.7, vf_coef=0.835671),
}  # fmt: skip

SB3_MUJOCO_RUNNER = r"""
import torch.nn as nn
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import VecNormalize
t_start = time.time()
env_id, hp = ENV_ID, HP
env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed), gamma=hp["gamma"])
model = PPO("MlpPolicy", env, n_steps=512, **hp, seed=seed, device="cpu", verbose=0,
            policy_kwargs=dict(log_std_init=-2, ortho_init=False, activation_fn=nn.ReLU,
                               net_arch=dict(pi=[256, 256], vf=[256, 256])))
learn_and_report(model, t_start, env, env_id)
"""

if __name__ == "__main__":
    runners = {
        env_id: ([], SB3_MUJOCO_RUNNER.replace("ENV_ID", repr(env_id)).replace("HP", repr(hp)))
        for env_id, hp in SB3_MUJOCO.items()
    }
    harness.continuous_benchmark(
        "ppo_continuous.py", "model.pt", "SB3 PPO", PENDULUM_FLAGS, SB3_PENDULUM, runners
    )
