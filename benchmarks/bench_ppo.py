"""Benchmark ppo_cartpole.py against Stable-Baselines3 PPO on CartPole-v1 (harness.py holds the
rules): steps and seconds until the mean return of the last 20 finished training episodes
reaches 475, and whether it stays there. SB3 uses the RL Zoo's tuned CartPole-v1
hyperparameters and runs to the full 100k budget, like ours. After the tables: bootstrap 95%
intervals (seeds resampled, 10,000 times) of each median and of the ratio of the medians.

    python benchmarks/bench_ppo.py                  # the 20 held-out seeds 1001..1020
    python benchmarks/bench_ppo.py --seeds 1001 1002 --only ppo_cartpole.py --no-save
    python benchmarks/bench_ppo.py --seeds $(seq 3001 3050) --name ppo_cartpole_fresh_3001-3050
"""

from harness import benchmark, run_peer, run_script

BUDGET = 100_000

SB3_PPO = r"""
from stable_baselines3 import PPO
t_start = time.time()
env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
            n_epochs=20, ent_coef=0.0, learning_rate=lin(1e-3), clip_range=lin(0.2),
            seed=seed, device="cpu", verbose=0)
learn_and_report(model, t_start)
"""


if __name__ == "__main__":
    impls = {
        "ppo_cartpole.py": lambda seed, out: run_script("ppo_cartpole.py", seed, out),
        "SB3 PPO (RL Zoo)": lambda seed, out: run_peer(SB3_PPO, seed, BUDGET, 475.0),
    }
    benchmark("ppo_cartpole", impls, BUDGET)
