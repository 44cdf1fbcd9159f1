"""Benchmark trpo.py against sb3-contrib's TRPO on CartPole-v1 (harness.py holds the rules):
steps and seconds until the mean return of the last 20 finished training episodes reaches
475, and whether it stays there. sb3-contrib uses the RL Zoo's tuned CartPole-v1
hyperparameters (n_envs 2, n_steps 512, batch 512, cg_damping 1e-3, gae_lambda 0.98, gamma
0.99, lr 1e-3, 20 critic updates) and runs to the full 150k budget, like ours.

    python benchmarks/bench_trpo.py                 # the 20 held-out seeds 1001..1020
    python benchmarks/bench_trpo.py --seeds 1001 1002 --only trpo.py --no-save
"""

from harness import script_vs_peer

BUDGET = 150_000

SB3_CONTRIB_TRPO = r"""
from sb3_contrib import TRPO
t_start = time.time()
env = make_vec_env("CartPole-v1", n_envs=2, seed=seed)
model = TRPO("MlpPolicy", env, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98,
             gamma=0.99, learning_rate=1e-3, n_critic_updates=20, seed=seed, device="cpu",
             verbose=0)
learn_and_report(model, t_start)
"""

if __name__ == "__main__":
    script_vs_peer("trpo", "trpo.py", "sb3-contrib TRPO (RL Zoo)", SB3_CONTRIB_TRPO, BUDGET)
