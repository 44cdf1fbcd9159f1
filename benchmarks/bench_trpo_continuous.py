"""Benchmark trpo_continuous.py against sb3-contrib TRPO on Pendulum-v1, same machine, same
run, same rule: steps and wall seconds until the mean return of the last 20 finished training
episodes reaches −200.

Ours runs with its defaults (Pendulum-v1, 100k steps). sb3-contrib uses the RL Zoo's
Pendulum-v1 hyperparameters (rl_zoo3 2.7.0 hyperparams/trpo.yml: 2 envs × 1024 steps, γ 0.9,
15 critic updates, gSDE with sample frequency 4, the rest at sb3-contrib's defaults, 100k
steps). Everything else is benchmarks/harness.py: the held-out seeds 1001..1010 by default,
alternating seed by seed, both to the full budget.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_trpo_continuous.py
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BUDGET, THRESHOLD, FLOOR = 100_000, -200.0, -400.0
SEEDS = harness.HELD_OUT_SEEDS[:10]  # Pendulum: 1001..1010

SB3_RUNNER = r"""
from sb3_contrib import TRPO
t_start = time.time()
env = make_vec_env("Pendulum-v1", n_envs=2, seed=seed)
model = TRPO("MlpPolicy", env, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True,
             sde_sample_freq=4, seed=seed, device="cpu", verbose=0)
cb = Episodes()
model.learn(total_timesteps=total, callback=cb)
report(cb, t_start)
"""


def ours(seed, out_dir):
    return harness.run_script("trpo_continuous.py", seed, out_dir, [f"--total-timesteps={BUDGET}"])


def sb3(seed, out_dir):
    return harness.run_peer(SB3_RUNNER, seed, BUDGET, THRESHOLD)


if __name__ == "__main__":
    sys.argv[1:1] = [] if "--seeds" in sys.argv else ["--seeds", *map(str, SEEDS)]
    harness.benchmark(
        "trpo_continuous_pendulum",
        {"trpo_continuous.py": ours, "sb3-contrib TRPO (RL Zoo, gSDE)": sb3},
        BUDGET,
        threshold=THRESHOLD,
        floor=FLOOR,
        title="Pendulum-v1",
        ylim=(-1600, 0),
    )
