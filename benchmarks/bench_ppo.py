"""Benchmark ppo_cartpole.py against Stable-Baselines3 PPO on CartPole-v1, same machine, same
run, same rule: steps and wall seconds until the mean return of the last 20 finished training
episodes reaches 475.

SB3 uses the RL Zoo's tuned CartPole-v1 hyperparameters. Both run one process per seed, on
the CPU with one torch thread, and time from the start of training (after the model and the
environments exist). Our runs go to the end, as a user's would; SB3's stop once solved, which
does not change their time to solve.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_ppo.py                 # seeds 1..10, a few minutes
    python benchmarks/bench_ppo.py --seeds 1 2 3 --skip-sb3
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SB3_RUNNER = r"""
import json, sys, time
from collections import deque
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

seed, total = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)
lin = lambda v: (lambda progress: progress * v)  # RL Zoo's lin_ schedules

class Solved(BaseCallback):
    def _on_training_start(self):
        self.t0, self.recent, self.episodes, self.solved = time.time(), deque(maxlen=20), [], None
    def _on_step(self):
        for info in self.locals["infos"]:
            if "episode" in info:
                self.recent.append(info["episode"]["r"])
                self.episodes.append((self.num_timesteps, float(info["episode"]["r"])))
                if len(self.recent) == 20 and sum(self.recent) / 20 >= 475:
                    self.solved = (self.num_timesteps, time.time() - self.t0)
                    return False
        return True

env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
model = PPO("MlpPolicy", env, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98,
            n_epochs=20, ent_coef=0.0, learning_rate=lin(1e-3), clip_range=lin(0.2),
            seed=seed, device="cpu", verbose=0)
cb = Solved()
model.learn(total_timesteps=total, callback=cb)
step, secs = cb.solved or (None, None)
print(json.dumps({"solved_at_step": step, "solved_at_s": secs, "episodes": cb.episodes}))
"""


def run(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed: {proc.stderr.strip()[-500:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ours(seed, out_dir):
    out = os.path.join(out_dir, f"ppo_seed{seed}")
    cmd = [sys.executable, "ppo_cartpole.py", "--no-cuda", "--seed", str(seed)]
    summary = run(cmd + ["--output-dir", out])
    with open(os.path.join(out, "episodes.csv")) as f:
        summary["episodes"] = [(int(r["global_step"]), float(r["episodic_return"])) for r in
                               csv.DictReader(f)]  # fmt: skip
    return summary


def sb3(seed, total):
    return run([sys.executable, "-c", SB3_RUNNER, str(seed), str(total)])


def stats(results, budget):
    steps = [r["solved_at_step"] for r in results if r["solved_at_step"] is not None]
    secs = [r["solved_at_s"] for r in results if r["solved_at_s"] is not None]
    within = sum(s <= budget for s in steps)

    def mmm(x, fmt):
        return " / ".join(fmt.format(f(x)) for f in (statistics.median, min, max)) if x else "-"

    return {
        "solved": f"{within}/{len(results)}",
        "steps": mmm(steps, "{:,.0f}"),
        "seconds": mmm(secs, "{:.1f}"),
        "median_steps": statistics.median(steps) if steps else None,
        "median_s": statistics.median(secs) if secs else None,
    }


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, color, results in runs:
        grid = np.linspace(0, 100_000, 201)
        curves = []
        for r in results:
            steps, rets = np.array(r["episodes"]).T
            mean20 = np.convolve(rets, np.ones(20) / 20, "valid")  # the solved statistic
            # SB3's runs stop once solved: hold their last value rather than let the median
            # be taken over the unsolved seeds only.
            curves.append(np.interp(grid, steps[19:], mean20))
            ax.plot(steps[19:], mean20, color=color, alpha=0.15, lw=0.8)
        ax.plot(grid, np.median(curves, 0), color=color, lw=2, label=f"{name} (median)")
    ax.axhline(475, color="k", ls="--", lw=1, label="solved: 475")
    ax.set(xlabel="environment steps", ylabel="mean return of last 20 episodes",
           title="CartPole-v1, one line per seed", ylim=(0, 520))  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    results = {"ppo_cartpole.py": [], "SB3 PPO (RL Zoo, stops once solved)": []}
    for seed in a.seeds:  # alternate the two, so that machine load drifts hit both alike
        results["ppo_cartpole.py"].append(ours(seed, a.out))
        if not a.skip_sb3:
            results["SB3 PPO (RL Zoo, stops once solved)"].append(sb3(seed, 100_000))
        for name, rs in results.items():
            if rs:
                print(f"seed {seed} {name}: solved_at_step={rs[-1]['solved_at_step']} "
                      f"solved_at_s={rs[-1]['solved_at_s']}", flush=True)  # fmt: skip

    rows = {name: stats(rs, 100_000) for name, rs in results.items() if rs}
    print(f"\n{len(a.seeds)} seeds, {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU\n")
    print("| implementation | solved within 100k | steps to solve (median / min / max) "
          "| seconds to solve (median / min / max) |")  # fmt: skip
    print("|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['solved']} | {s['steps']} | {s['seconds']} |")
    if len(rows) == 2:
        o, b = rows.values()
        if o["median_steps"] and b["median_steps"]:
            print(f"\nmedian steps ratio (ours / SB3): {o['median_steps'] / b['median_steps']:.2f}")
            print(f"median seconds ratio (ours / SB3): {o['median_s'] / b['median_s']:.2f}")

    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    slim = {n: [{k: v for k, v in r.items() if k != "episodes"} for r in rs]
            for n, rs in results.items()}  # fmt: skip
    with open(os.path.join(a.out, "ppo_runs_with_episodes.json"), "w") as f:
        json.dump(results, f)
    with open(os.path.join(ROOT, "benchmarks", "results", "ppo_cartpole.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "summary": rows, "runs": slim}, f, indent=1)
    os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
    plot([(n, c, rs) for (n, rs), c in zip(results.items(), ["tab:blue", "tab:orange"], strict=True)
          if rs], os.path.join(ROOT, "docs", "img", "ppo_cartpole_curve.png"))  # fmt: skip


if __name__ == "__main__":
    main()
