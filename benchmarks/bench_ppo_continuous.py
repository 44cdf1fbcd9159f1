"""Benchmark ppo_continuous.py against Stable-Baselines3 PPO on Pendulum-v1 or MuJoCo, same
machine, same run, same rule. Pendulum-v1: steps and wall seconds until the mean return of the
last 20 finished training episodes reaches −200. HalfCheetah-v5 and Hopper-v5 (`--env-id`):
the last-20 training mean at 1M steps, a 10-episode deterministic evaluation of the final
policy with its observation statistics frozen, and the training seconds.

Ours runs with its documented Pendulum set (ppo_continuous.PENDULUM). SB3 uses the RL Zoo's
Pendulum-v1 hyperparameters (rl_zoo3 2.7.0 hyperparams/ppo.yml: 4 envs × 1024 steps, batch
64, 10 epochs, γ 0.9, λ 0.95, lr 1e-3, clip 0.2, gSDE with sample frequency 4, no
normalisation, 100k steps). Both run to the full 100k steps, one process per seed, CPU, one
torch thread, time counted from the start of training. Everything else is
benchmarks/harness.py: the held-out seeds 1001..1010 by default, alternating seed by seed.

On MuJoCo ours runs with its defaults (CleanRL's settings) and SB3 with the RL Zoo's tuned
HalfCheetah and Hopper sets (hyperparams/ppo.yml, tuned on v3: VecNormalize with the
algorithm's γ, 1 env × 512 steps, ReLU 256-256 networks, log σ₀ = −2; the rest per env in
SB3_MUJOCO below). Held-out seeds 1001..1003 by default; about 15–25 minutes a run here.

    pip install -r benchmarks/requirements.txt
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

BUDGET, THRESHOLD, FLOOR = 100_000, -200.0, -400.0
SEEDS = harness.HELD_OUT_SEEDS[:10]  # Pendulum: 1001..1010
MUJOCO_BUDGET, MUJOCO_SEEDS = 1_000_000, harness.HELD_OUT_SEEDS[:3]

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
cb = Episodes()
model.learn(total_timesteps=total, callback=cb)
train_s = round(time.time() - t_start, 2)
report(cb, t_start, train_s=train_s, **evaluate_normalized(model, env, env_id, seed))
"""


def ours(seed, out_dir):
    return harness.run_script("ppo_continuous.py", seed, out_dir, PENDULUM_FLAGS)


def sb3(seed, out_dir):
    return harness.run_peer(SB3_RUNNER, seed, BUDGET, THRESHOLD)


def ours_mujoco(env_id):
    flags = [f"--env-id={env_id}", f"--total-timesteps={MUJOCO_BUDGET}"]
    return lambda seed, out: harness.run_script_final(
        "ppo_continuous.py", seed, out, "agent.pt", flags
    )


def sb3_mujoco(env_id):
    runner = SB3_MUJOCO_RUNNER.replace("ENV_ID", repr(env_id)).replace(
        "HP", repr(SB3_MUJOCO[env_id])
    )
    return lambda seed, out: harness.run_peer(runner, seed, MUJOCO_BUDGET, float("inf"))


if __name__ == "__main__":
    env_id = harness.pop_option("--env-id", "Pendulum-v1", ["Pendulum-v1", *SB3_MUJOCO])
    seeds = SEEDS if env_id == "Pendulum-v1" else MUJOCO_SEEDS
    sys.argv[1:1] = [] if "--seeds" in sys.argv else ["--seeds", *map(str, seeds)]
    if env_id != "Pendulum-v1":
        harness.benchmark_final(
            f"ppo_continuous_{env_id.split('-')[0].lower()}",
            {"ppo_continuous.py": ours_mujoco(env_id), "SB3 PPO (RL Zoo)": sb3_mujoco(env_id)},
            MUJOCO_BUDGET,
            title=env_id,
        )
        sys.exit()
    harness.benchmark(
        "ppo_continuous_pendulum",
        {"ppo_continuous.py": ours, "SB3 PPO (RL Zoo, gSDE)": sb3},
        BUDGET,
        threshold=THRESHOLD,
        floor=FLOOR,
        title="Pendulum-v1",
        ylim=(-1600, 0),
    )
