"""Benchmark trpo.py against sb3-contrib's TRPO on CartPole-v1, same machine, same run, same
rule: steps and wall seconds until the mean return of the last 20 finished training episodes
reaches 475.

sb3-contrib uses the RL Zoo's tuned CartPole-v1 hyperparameters (n_envs 2, n_steps 512,
batch 512, cg_damping 1e-3, gae_lambda 0.98, gamma 0.99, lr 1e-3, 20 critic updates). Both run
one process per seed, on the CPU with one torch thread, and time from the start of training
(after the model and the environments exist). trpo.py runs its default Args to the end, as a
user's run would; sb3-contrib stops once solved, which does not change its time to solve.

    pip install -r benchmarks/requirements.txt
    python benchmarks/bench_trpo.py                  # seeds 1..10, ~15 minutes
    python benchmarks/bench_trpo.py --seeds 1 2 3 --skip-sb3
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
BUDGET = 150_000  # the target: solved within this many environment steps

SB3_RUNNER = r"""
import json, sys, time
from collections import deque
import torch
from sb3_contrib import TRPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

seed, total = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(1)

class Solved(BaseCallback):
    # Monitor (added by make_vec_env) puts info["episode"] at each episode end.
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

env = make_vec_env("CartPole-v1", n_envs=2, seed=seed)
model = TRPO("MlpPolicy", env, n_steps=512, batch_size=512, cg_damping=1e-3, gae_lambda=0.98,
             gamma=0.99, learning_rate=1e-3, n_critic_updates=20, seed=seed, device="cpu",
             verbose=0)
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
    out = os.path.join(out_dir, f"trpo_seed{seed}")
    summary = run(
        [sys.executable, "trpo.py", "--no-cuda", "--seed", str(seed), "--output-dir", out]
    )
    with open(os.path.join(out, "episodes.csv")) as f:
        summary["episodes"] = [(int(r["global_step"]), float(r["episodic_return"])) for r in
                               csv.DictReader(f)]  # fmt: skip
    return summary


def sb3(seed):
    return run([sys.executable, "-c", SB3_RUNNER, str(seed), str(BUDGET)])


def stats(results):
    steps = [r["solved_at_step"] for r in results if r["solved_at_step"] is not None]
    secs = [r["solved_at_s"] for r in results if r["solved_at_s"] is not None]

    def mmm(x, fmt):
        return " / ".join(fmt.format(f(x)) for f in (statistics.median, min, max)) if x else "-"

    return {
        "solved": f"{sum(s <= BUDGET for s in steps)}/{len(results)}",
        "steps": mmm(steps, "{:,.0f}"),
        "seconds": mmm(secs, "{:.1f}"),
        "median_steps": statistics.median(steps) if steps else None,
        "median_s": statistics.median(secs) if secs else None,
    }


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    grid = np.linspace(0, BUDGET, 301)
    for name, color, results in runs:
        curves = []
        for r in results:
            steps, rets = np.array(r["episodes"]).T
            mean20 = np.convolve(rets, np.ones(20) / 20, "valid")  # the solved statistic
            curves.append(np.interp(grid, steps[19:], mean20, left=np.nan, right=np.nan))
            ax.plot(steps[19:], mean20, color=color, alpha=0.15, lw=0.8)
        # The median only where every seed still runs: a median over the seeds that have not
        # stopped yet would show only the slow ones.
        ax.plot(grid, np.median(curves, 0), color=color, lw=2, label=f"{name} (median)")
        solved = sorted(r["solved_at_step"] for r in results if r["solved_at_step"] is not None)
        frac = np.arange(len(solved) + 1) / len(results)
        ax2.step([0, *solved, BUDGET], [*frac, frac[-1]], where="post", color=color, label=name)
    ax.axhline(475, color="k", ls="--", lw=1, label="solved: 475")
    ax.set(xlabel="environment steps", ylabel="mean return of last 20 episodes",
           title="CartPole-v1, one line per seed", ylim=(0, 520))  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    ax2.set(xlabel="environment steps", ylabel="fraction of seeds solved", ylim=(0, 1.05),
            title="seeds that met the solved rule")  # fmt: skip
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    p.add_argument("--skip-sb3", action="store_true")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    ours_name, sb3_name = "trpo.py", "sb3-contrib TRPO (RL Zoo)"
    results = {ours_name: [], sb3_name: []}
    for seed in a.seeds:  # alternate the two, so that machine load drifts hit both alike
        results[ours_name].append(ours(seed, a.out))
        if not a.skip_sb3:
            results[sb3_name].append(sb3(seed))
        for name, rs in results.items():
            if rs:
                print(f"seed {seed} {name}: solved_at_step={rs[-1]['solved_at_step']} "
                      f"solved_at_s={rs[-1]['solved_at_s']}", flush=True)  # fmt: skip

    def cell(r):
        if r["solved_at_step"] is None:
            return "not solved | -"
        return f"{r['solved_at_step']:,} | {r['solved_at_s']:.1f}"

    print(f"\n{len(a.seeds)} seeds, {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU\n")
    names = [n for n, rs in results.items() if rs]
    print("| seed | " + " | ".join(f"{n}: steps | {n}: s" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    for i, seed in enumerate(a.seeds):
        print(f"| {seed} | " + " | ".join(cell(results[n][i]) for n in names) + " |")

    rows = {name: stats(results[name]) for name in names}
    print(f"\n| implementation | solved within {BUDGET // 1000}k | steps to solve "
          "(median / min / max) | seconds to solve (median / min / max) |")  # fmt: skip
    print("|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['solved']} | {s['steps']} | {s['seconds']} |")
    ratios = {}
    if len(rows) == 2 and all(s["median_steps"] for s in rows.values()):
        o, b = rows.values()
        ratios = {"median_steps": o["median_steps"] / b["median_steps"],
                  "median_s": o["median_s"] / b["median_s"]}  # fmt: skip
        print(f"\nmedian steps ratio (ours / sb3-contrib): {ratios['median_steps']:.2f}")
        print(f"median seconds ratio (ours / sb3-contrib): {ratios['median_s']:.2f}")

    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    slim = {n: [{k: v for k, v in r.items() if k != "episodes"} for r in rs]
            for n, rs in results.items()}  # fmt: skip
    with open(os.path.join(ROOT, "benchmarks", "results", "trpo.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "seeds": a.seeds, "summary": rows,
                   "ratios_ours_over_sb3": ratios, "runs": slim}, f, indent=1)  # fmt: skip
    os.makedirs(os.path.join(ROOT, "docs", "img"), exist_ok=True)
    colors = {ours_name: "tab:blue", sb3_name: "tab:orange"}
    plot([(n, colors[n], results[n]) for n in names],
         os.path.join(ROOT, "docs", "img", "trpo_curve.png"))  # fmt: skip


if __name__ == "__main__":
    main()
