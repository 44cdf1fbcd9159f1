"""Benchmark trpo_continuous.py against sb3-contrib TRPO on Pendulum-v1 or MuJoCo, same machine,
same run, same rule. Pendulum-v1: steps and wall seconds until the mean return of the last 20
finished training episodes reaches −200. HalfCheetah-v5 and Hopper-v5 (`--env-id`): the
last-20 training mean at 1M steps, a 10-episode deterministic evaluation of the final policy
with its observation statistics frozen, and the training seconds.

Ours runs with its defaults (Pendulum-v1, 100k steps). sb3-contrib uses the RL Zoo's
Pendulum-v1 hyperparameters (rl_zoo3 2.7.0 hyperparams/trpo.yml: 2 envs × 1024 steps, γ 0.9,
15 critic updates, gSDE with sample frequency 4, the rest at sb3-contrib's defaults, 100k
steps). Everything else is benchmarks/harness.py: the held-out seeds 1001..1010 by default,
alternating seed by seed, both to the full budget.

On MuJoCo both run the RL Zoo's MuJoCo set for sb3-contrib TRPO (hyperparams/trpo.yml:
VecNormalize, 2 envs × 1024 steps, γ 0.99, λ 0.95, 25 CG iterations, damping 0.1, 20 critic
epochs of minibatch 128 at lr 1e-3, KL bound 0.01, 0.04 on HalfCheetah), translated into our
flags, not re-tuned: the comparison is of the implementations. Held-out seeds 1001..1003.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_trpo_continuous.py
    python benchmarks/bench_trpo_continuous.py --env-id HalfCheetah-v5
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

BUDGET, THRESHOLD, FLOOR = 100_000, -200.0, -400.0
SEEDS = harness.HELD_OUT_SEEDS[:10]  # Pendulum: 1001..1010
MUJOCO_BUDGET, MUJOCO_SEEDS = 1_000_000, harness.HELD_OUT_SEEDS[:3]
MAX_KL = {"HalfCheetah-v5": 0.04, "Hopper-v5": 0.01}  # the Zoo's target_kl
# The Zoo's MuJoCo set in our flags (the KL bound is per env, above).
MUJOCO_FLAGS = ["--num-envs=2", "--num-steps=1024", "--gamma=0.99", "--gae-lambda=0.95",
                "--cg-iters=25", "--cg-damping=0.1", "--learning-rate=1e-3",
                "--critic-epochs=20", "--critic-minibatch-size=128"]  # fmt: skip

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


SB3_MUJOCO_RUNNER = r"""
from sb3_contrib import TRPO
from stable_baselines3.common.vec_env import VecNormalize
t_start = time.time()
env_id = ENV_ID
env = VecNormalize(make_vec_env(env_id, n_envs=2, seed=seed), gamma=0.99)
model = TRPO("MlpPolicy", env, n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95,
             sub_sampling_factor=1, cg_max_steps=25, cg_damping=0.1, n_critic_updates=20,
             learning_rate=1e-3, target_kl=MAX_KL, seed=seed, device="cpu", verbose=0)
cb = Episodes()
model.learn(total_timesteps=total, callback=cb)
train_s = round(time.time() - t_start, 2)
report(cb, t_start, train_s=train_s, **evaluate_normalized(model, env, env_id, seed))
"""


def ours(seed, out_dir):
    return harness.run_script("trpo_continuous.py", seed, out_dir, [f"--total-timesteps={BUDGET}"])


def sb3(seed, out_dir):
    return harness.run_peer(SB3_RUNNER, seed, BUDGET, THRESHOLD)


def ours_mujoco(env_id):
    flags = [f"--env-id={env_id}", f"--total-timesteps={MUJOCO_BUDGET}",
             f"--max-kl={MAX_KL[env_id]}", *MUJOCO_FLAGS]  # fmt: skip
    return lambda seed, out: harness.run_script_final(
        "trpo_continuous.py", seed, out, "trpo.pt", flags
    )


def sb3_mujoco(env_id):
    runner = SB3_MUJOCO_RUNNER.replace("ENV_ID", repr(env_id)).replace(
        "MAX_KL", repr(MAX_KL[env_id])
    )
    return lambda seed, out: harness.run_peer(runner, seed, MUJOCO_BUDGET, float("inf"))


if __name__ == "__main__":
    env_id = harness.pop_option("--env-id", "Pendulum-v1", ["Pendulum-v1", *MAX_KL])
    seeds = SEEDS if env_id == "Pendulum-v1" else MUJOCO_SEEDS
    sys.argv[1:1] = [] if "--seeds" in sys.argv else ["--seeds", *map(str, seeds)]
    if env_id != "Pendulum-v1":
        harness.benchmark_final(
            f"trpo_continuous_{env_id.split('-')[0].lower()}",
            {
                "trpo_continuous.py": ours_mujoco(env_id),
                "sb3-contrib TRPO (RL Zoo)": sb3_mujoco(env_id),
            },
            MUJOCO_BUDGET,
            title=env_id,
        )
        sys.exit()
    harness.benchmark(
        "trpo_continuous_pendulum",
        {"trpo_continuous.py": ours, "sb3-contrib TRPO (RL Zoo, gSDE)": sb3},
        BUDGET,
        threshold=THRESHOLD,
        floor=FLOOR,
        title="Pendulum-v1",
        ylim=(-1600, 0),
    )
