"""Benchmark trpo_continuous.py against sb3-contrib TRPO on Pendulum-v1 or MuJoCo, same
machine, same run, same rules (harness.continuous_benchmark): on Pendulum-v1 the steps and
seconds to a last-20 mean of −200; on HalfCheetah-v5 and Hopper-v5 (`--env-id`) the last-20
training mean at 1M steps, a 10-episode deterministic evaluation and the training seconds.

Pendulum: ours runs with its defaults (Pendulum-v1, 100k steps), sb3-contrib with the RL Zoo's
set (rl_zoo3 hyperparams/trpo.yml: 2 envs × 1024 steps, γ 0.9, 15 critic updates, gSDE with
sample frequency 4, the rest at sb3-contrib's defaults). MuJoCo: both run the Zoo's MuJoCo
set for sb3-contrib TRPO (VecNormalize, 2 envs × 1024 steps, γ 0.99, λ 0.95, 25 CG
iterations, damping 0.1, 20 critic epochs of minibatch 128 at lr 1e-3, KL bound 0.01, 0.04 on
HalfCheetah), translated into our flags and not re-tuned: the comparison is of the
implementations. Held-out seeds 1001..1010 on Pendulum, 1001..1003 on MuJoCo.

    python benchmarks/bench_trpo_continuous.py
    python benchmarks/bench_trpo_continuous.py --env-id HalfCheetah-v5
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

SB3_PENDULUM = r"""
from sb3_contrib import TRPO
t_start = time.time()
env = make_vec_env("Pendulum-v1", n_envs=2, seed=seed)
model = TRPO("MlpPolicy", env, n_steps=1024, gamma=0.9, n_critic_updates=15, use_sde=True,
             sde_sample_freq=4, seed=seed, device="cpu", verbose=0)
learn_and_report(model, t_start)
"""

MAX_KL = {"HalfCheetah-v5": 0.04, "Hopper-v5": 0.01}  # the Zoo's target_kl
# The Zoo's MuJoCo set in our flags (the KL bound is per env, above).
MUJOCO_FLAGS = ["--num-envs=2", "--num-steps=1024", "--gamma=0.99", "--gae-lambda=0.95",
                "--cg-iters=25", "--cg-damping=0.1", "--learning-rate=1e-3",
                "--critic-epochs=20", "--critic-minibatch-size=128"]  # fmt: skip

SB3_MUJOCO_RUNNER = r"""
from sb3_contrib import TRPO
from stable_baselines3.common.vec_env import VecNormalize
t_start = time.time()
env_id = ENV_ID
env = VecNormalize(make_vec_env(env_id, n_envs=2, seed=seed), gamma=0.99)
model = TRPO("MlpPolicy", env, n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95,
             sub_sampling_factor=1, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20,
             learning_rate=1e-3, target_kl=MAX_KL, seed=seed, device="cpu", verbose=0)
learn_and_report(model, t_start, env, env_id)
"""

if __name__ == "__main__":
    runners = {
        env_id: (
            [f"--max-kl={kl}", *MUJOCO_FLAGS],
            SB3_MUJOCO_RUNNER.replace("ENV_ID", repr(env_id)).replace("MAX_KL", repr(kl)),
        )
        for env_id, kl in MAX_KL.items()
    }
    pendulum_flags = [f"--total-timesteps={harness.PENDULUM_BUDGET}"]
    harness.continuous_benchmark(
        "trpo_continuous.py", "model.pt", "sb3-contrib TRPO", pendulum_flags, SB3_PENDULUM, runners
    )
