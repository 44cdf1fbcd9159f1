"""Benchmark trpo.py against sb3-contrib's TRPO on CartPole-v1 (harness.py holds the rules):
steps and seconds until the mean return of the last 20 finished training episodes reaches
475, and whether it stays there. sb3-contrib uses the RL Zoo's tuned CartPole-v1
hyperparameters (n_envs 2, n_steps 512, batch 512, cg_damping 1e-3, gae_lambda 0.98, gamma
0.99, lr 1e-3, 20 critic updates) and runs to the full 150k budget, like ours. After the
tables: bootstrap 95% intervals of each median and of the ratio (bench_ppo.bootstrap).

    python benchmarks/bench_trpo.py                 # the 20 held-out seeds 1001..1020
    python benchmarks/bench_trpo.py --seeds 1001 1002 --only trpo.py --no-save
    python benchmarks/bench_trpo.py --seeds $(seq 3101 3120) --name trpo_fresh_3101-3120
"""

import json
import os
import sys

from bench_ppo import bootstrap
from harness import ROOT, benchmark, run_peer, run_script

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
    name = "trpo"  # --name NAME: results/NAME.json and docs/img/NAME_curve.png
    if "--name" in sys.argv:
        i = sys.argv.index("--name")
        name = sys.argv[i + 1]
        del sys.argv[i : i + 2]
    impls = {
        "trpo.py": lambda seed, out: run_script("trpo.py", seed, out),
        "sb3-contrib TRPO (RL Zoo)": lambda s, o: run_peer(SB3_CONTRIB_TRPO, s, BUDGET, 475.0),
    }
    results, rows = benchmark(name, impls, BUDGET)
    if len(results) > 1:
        boot = {k: bootstrap(results, k) for k in ("solved_at_step", "solved_at_s")}
        print("\nbootstrap 95% intervals (seeds resampled):")
        for key, b in boot.items():
            for label, v in b.items():
                point = v.get("median", v.get("ratio"))
                print(f"  {key} {label}: {point:,.3f} [{v['ci95'][0]:,.3f}, {v['ci95'][1]:,.3f}]")
        path = os.path.join(ROOT, "benchmarks", "results", f"{name}.json")
        if "--no-save" not in sys.argv and os.path.exists(path):
            with open(path) as f:
                payload = json.load(f)
            payload["bootstrap_95"] = boot
            with open(path, "w") as f:
                json.dump(payload, f, indent=1)
