"""Benchmark ppo_cartpole.py against Stable-Baselines3 PPO on CartPole-v1 (harness.py holds the
rules): steps and seconds until the mean return of the last 20 finished training episodes
reaches 475, and whether it stays there. SB3 uses the RL Zoo's tuned CartPole-v1
hyperparameters and runs to the full 100k budget, like ours. After the tables: bootstrap 95%
intervals (seeds resampled, 10,000 times) of each median and of the ratio of the medians.

    python benchmarks/bench_ppo.py                  # the 20 held-out seeds 1001..1020
    python benchmarks/bench_ppo.py --seeds 1001 1002 --only ppo_cartpole.py --no-save
    python benchmarks/bench_ppo.py --seeds $(seq 3001 3050) --name ppo_cartpole_fresh_3001-3050
"""

import json
import os
import sys

import numpy as np
from harness import ROOT, benchmark, run_peer, run_script

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


def bootstrap(results, key, n=10_000, seed=0):
    """Percentile 95% intervals of each implementation's median `key` (an unsolved seed counts
    as infinitely slow) and of the ratio first / other, resampling the seeds with replacement
    (the same seeds for both sides: the runs are paired by seed)."""
    names = list(results)
    x = {k: np.array([np.inf if r[key] is None else r[key] for r in results[k]]) for k in names}
    idx = np.random.default_rng(seed).integers(0, len(x[names[0]]), (n, len(x[names[0]])))
    med = {k: np.median(v[idx], axis=1) for k, v in x.items()}

    def ci(v):
        lo, hi = np.percentile(v, [2.5, 97.5])
        return [float(lo), float(hi)]

    out = {k: {"median": float(np.median(v)), "ci95": ci(med[k])} for k, v in x.items()}
    for other in names[1:]:
        point = float(np.median(x[names[0]]) / np.median(x[other]))
        out[f"ratio_over_{other}"] = {"ratio": point, "ci95": ci(med[names[0]] / med[other])}
    return out


if __name__ == "__main__":
    name = "ppo_cartpole"  # --name NAME: results/NAME.json and docs/img/NAME_curve.png
    if "--name" in sys.argv:
        i = sys.argv.index("--name")
        name = sys.argv[i + 1]
        del sys.argv[i : i + 2]
    impls = {
        "ppo_cartpole.py": lambda seed, out: run_script("ppo_cartpole.py", seed, out),
        "SB3 PPO (RL Zoo)": lambda seed, out: run_peer(SB3_PPO, seed, BUDGET, 475.0),
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
