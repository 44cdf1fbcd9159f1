"""Benchmark ppo_continuous.py against Stable-Baselines3 PPO on Pendulum-v1, same machine, same
run, same rule: steps and wall seconds until the mean return of the last 20 finished training
episodes reaches −200.

Ours runs with its documented Pendulum set (ppo_continuous.PENDULUM). SB3 uses the RL Zoo's
Pendulum-v1 hyperparameters (rl_zoo3 2.7.0 hyperparams/ppo.yml: 4 envs × 1024 steps, batch
64, 10 epochs, γ 0.9, λ 0.95, lr 1e-3, clip 0.2, gSDE with sample frequency 4, no
normalisation, 100k steps). Both run to the full 100k steps, one process per seed, CPU, one
torch thread, time counted from the start of training. Everything else is
benchmarks/harness.py: the held-out seeds 1001..1010 by default, alternating seed by seed.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_ppo_continuous.py
    python benchmarks/bench_ppo_continuous.py --seeds 1001 --only ppo_continuous.py --no-save
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402

import ppo_continuous  # noqa: E402  (for its PENDULUM set only)

BUDGET, THRESHOLD, FLOOR = 100_000, -200.0, -400.0
SEEDS = harness.HELD_OUT_SEEDS[:10]  # Pendulum: 1001..1010

# The documented Pendulum-v1 set of ppo_continuous.py, as a command line.
PENDULUM_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in ppo_continuous.PENDULUM.items()]
assert ppo_continuous.PENDULUM["total_timesteps"] == BUDGET

SB3_RUNNER = r"""
from stable_baselines3 import PPO
t_start = time.time()
env = make_vec_env("Pendulum-v1", n_envs=4, seed=seed)
model = PPO("MlpPolicy", env, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10,
            ent_coef=0.0, learning_rate=1e-3, clip_range=0.2, use_sde=True,
            sde_sample_freq=4, seed=seed, device="cpu", verbose=0)
cb = Episodes()
model.learn(total_timesteps=total, callback=cb)
report(cb, t_start)
"""


def ours(seed, out_dir):
    return harness.run_script("ppo_continuous.py", seed, out_dir, PENDULUM_FLAGS)


def sb3(seed, out_dir):
    return harness.run_peer(SB3_RUNNER, seed, BUDGET, THRESHOLD)


if __name__ == "__main__":
    sys.argv[1:1] = [] if "--seeds" in sys.argv else ["--seeds", *map(str, SEEDS)]
    harness.benchmark(
        "ppo_continuous_pendulum",
        {"ppo_continuous.py": ours, "SB3 PPO (RL Zoo, gSDE)": sb3},
        BUDGET,
        threshold=THRESHOLD,
        floor=FLOOR,
        title="Pendulum-v1",
        ylim=(-1600, 0),
    )
