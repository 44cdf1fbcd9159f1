"""Benchmark trpo.py against sb3-contrib's TRPO on CartPole-v1 (harness.py holds the rules):
steps and seconds until the mean return of the last 20 finished training episodes reaches
475, and whether it stays there. sb3-contrib uses the RL Zoo's tuned CartPole-v1
hyperparameters (n_envs 2, n_steps 512, batch 512, cg_damping 1e-3, gae_lambda 0.98, gamma
0.99, lr 1e-3, 20 critic updates) and runs to the full 150k budget, like ours. After the
tables: bootstrap 95% intervals of each median and of the ratio (harness.bootstrap).

    python benchmarks/bench_trpo.py                 # the 20 held-out seeds 1001..1020
    python benchmarks/bench_trpo.py --seeds 1001 1002 --only trpo.py --no-save
    python benchmarks/bench_trpo.py --seeds $(seq 3101 3120) --name trpo_fresh_3101-3120
"""

from harness import benchmark, run_peer, run_script

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
    impls = {
        "trpo.py": lambda seed, out: run_script("trpo.py", seed, out),
        "sb3-contrib TRPO (RL Zoo)": lambda s, o: run_peer(SB3_CONTRIB_TRPO, s, BUDGET, 475.0),
    }
    benchmark("trpo", impls, BUDGET)
