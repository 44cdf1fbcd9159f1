"""Benchmark reinforce.py: steps and wall seconds to solve CartPole-v1 over several seeds.

Runs the script once per seed as a subprocess (default Args, --no-cuda), reads its final JSON
line, prints a Markdown table, writes benchmarks/results/reinforce.json and the learning
curve docs/img/reinforce_curve.png (needs matplotlib, see benchmarks/requirements.txt).

    python benchmarks/bench_reinforce.py                       # seeds 1..10
    python benchmarks/bench_reinforce.py --seeds 1 2 -- --baseline mean
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = "reinforce"
BUDGET = 300_000  # the target: >= 9/10 seeds solve within this many steps


def run_seed(seed, out_dir, extra):
    cmd = [sys.executable, os.path.join(ROOT, f"{SCRIPT}.py"), "--seed", str(seed)]
    cmd += ["--no-cuda", "--output-dir", out_dir, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"error: seed {seed} failed: {proc.stderr.strip()}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def read_curve(out_dir):
    with open(os.path.join(out_dir, "episodes.csv")) as f:
        rows = list(csv.DictReader(f))
    steps = np.array([int(r["global_step"]) for r in rows])
    returns = np.array([float(r["episodic_return"]) for r in rows])
    # The solved rule's statistic: mean return of the last 20 finished episodes.
    window = np.convolve(returns, np.ones(20), "valid") / 20
    return steps[19:], window


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, max(s[-1] for s, _ in curves), 300)
    # Before a seed's first 20 episodes the statistic is undefined; hold its first value.
    stacked = np.stack([np.interp(grid, s, w) for s, w in curves])
    fig, ax = plt.subplots(figsize=(7, 4))
    for s, w in curves:
        ax.plot(s, w, color="tab:blue", alpha=0.2, lw=0.8)
    ax.plot(grid, np.median(stacked, 0), color="tab:blue", lw=2, label="median over seeds")
    ax.axhline(475, color="k", ls="--", lw=1, label="solved (475)")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("mean return of last 20 episodes")
    ax.set_title(f"{SCRIPT}.py on CartPole-v1, {len(curves)} seeds, default Args")
    ax.legend(loc="lower right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=100)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--runs-dir", default=os.path.join(ROOT, "runs", f"bench_{SCRIPT}"))
    parser.add_argument(
        "--results", default=os.path.join(ROOT, "benchmarks", "results", f"{SCRIPT}.json")
    )
    parser.add_argument("--no-plot", action="store_true", help="skip the learning-curve PNG")
    parser.add_argument("extra", nargs="*", help=f"flags passed to {SCRIPT}.py after --")
    args = parser.parse_args()

    results, curves = [], []
    print("| seed | solved_at_step | solved_at_s | final_mean_return | wall_time_s |")
    print("|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        out_dir = os.path.join(args.runs_dir, f"seed{seed}_{int(time.time())}")
        r = run_seed(seed, out_dir, args.extra)
        results.append(r)
        curves.append(read_curve(out_dir))
        print(
            f"| {seed} | {r['solved_at_step']} | {r['solved_at_s']} | "
            f"{r['final_mean_return']:.1f} | {r['wall_time_s']} |",
            flush=True,
        )

    solved = [r for r in results if r["solved_at_step"] is not None]
    in_budget = [r for r in solved if r["solved_at_step"] <= BUDGET]
    # Unsolved seeds count as infinitely slow, so the median is honest when few seeds solve.
    steps = sorted(r["solved_at_step"] if r in solved else float("inf") for r in results)
    secs = sorted(r["solved_at_s"] if r in solved else float("inf") for r in results)
    stats = {
        "solved": f"{len(solved)}/{len(results)}",
        "solved_within_300k": f"{len(in_budget)}/{len(results)}",
        "median_steps": statistics.median(steps),
        "min_steps": steps[0],
        "max_steps": steps[-1],
        "median_s": statistics.median(secs),
        "min_s": secs[0],
        "max_s": secs[-1],
    }
    print()
    print(f"solved {stats['solved']} (within 300k steps: {stats['solved_within_300k']})")
    print("| | median | min | max |")
    print("|---|---:|---:|---:|")
    print(f"| steps to solve | {stats['median_steps']} | {steps[0]} | {steps[-1]} |")
    print(f"| seconds to solve | {stats['median_s']} | {secs[0]} | {secs[-1]} |")

    summary = {
        "script": f"{SCRIPT}.py",
        "extra_flags": args.extra,
        "machine": f"{platform.platform()}, {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
        "stats": {k: (None if v == float("inf") else v) for k, v in stats.items()},
        "runs": results,
    }
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results, "w") as f:
        json.dump(summary, f, indent=1)
    if not args.no_plot:
        plot(curves, os.path.join(ROOT, "docs", "img", f"{SCRIPT}_curve.png"))


if __name__ == "__main__":
    main()
