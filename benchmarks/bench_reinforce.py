"""Benchmark reinforce.py on CartPole-v1: steps and wall seconds until the mean return of the
last 20 finished training episodes reaches 475, over several seeds.

Two configurations run in the same session, alternating seed by seed so that drifts in
machine load hit both alike: the default Args (value baseline, normalised advantages), and
textbook REINFORCE (`--baseline none --no-normalize-advantages`), the in-run reference that
shows what the baseline buys. Each run is a subprocess with --no-cuda and trains to its full
--total-timesteps (300k); the time to solve is measured from the start of training. Writes
benchmarks/results/reinforce.json and docs/img/reinforce_curve.png (needs matplotlib).

    python benchmarks/bench_reinforce.py                    # seeds 1..10, both configurations
    python benchmarks/bench_reinforce.py --seeds 1 2 --skip-textbook -- --learning-rate 3e-3
"""

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 300_000  # the target: >= 9/10 seeds solve within this, median <= 150k
DEFAULTS = "reinforce.py (default Args)"
TEXTBOOK = "textbook: --baseline none --no-normalize-advantages"


def run(seed, flags, out):
    cmd = [sys.executable, os.path.join(ROOT, "reinforce.py"), "--no-cuda", "--seed", str(seed)]
    proc = subprocess.run(cmd + flags + ["--output-dir", out], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: seed {seed} {flags} failed: {proc.stderr.strip()[-500:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(out, "episodes.csv")) as f:
        summary["episodes"] = [(int(r["global_step"]), float(r["episodic_return"])) for r in
                               csv.DictReader(f)]  # fmt: skip
    return summary


def stats(results):
    """Median/min/max over all seeds; a seed that never solves counts as infinitely slow, so
    the median stays honest when some seeds fail."""
    inf = float("inf")
    steps = sorted(inf if r["solved_at_step"] is None else r["solved_at_step"] for r in results)
    secs = sorted(inf if r["solved_at_s"] is None else r["solved_at_s"] for r in results)

    def mmm(x, fmt):
        return " / ".join("never" if v == inf else fmt.format(v) for v in
                          (statistics.median(x), x[0], x[-1]))  # fmt: skip

    def finite(v):
        return None if v == inf else v

    return {
        "solved_within_300k": f"{sum(s <= BUDGET for s in steps)}/{len(results)}",
        "steps": mmm(steps, "{:,.0f}"),
        "seconds": mmm(secs, "{:.1f}"),
        "median_steps": finite(statistics.median(steps)),
        "median_s": finite(statistics.median(secs)),
        "mean_final_return": round(float(np.mean([r["final_mean_return"] for r in results])), 1),
    }


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    grid = np.linspace(0, BUDGET, 301)
    for name, color, results in runs:
        curves = []
        for r in results:
            steps, rets = np.array(r["episodes"]).T
            mean20 = np.convolve(rets, np.ones(20) / 20, "valid")  # the solved statistic
            curves.append(np.interp(grid, steps[19:], mean20, left=np.nan, right=np.nan))
            ax.plot(steps[19:], mean20, color=color, alpha=0.15, lw=0.8)
        with warnings.catch_warnings():  # grid points that no run reached are NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(curves, 0)
        ax.plot(grid, median, color=color, lw=2, label=f"{name} (median)")
    ax.axhline(475, color="k", ls="--", lw=1, label="solved: 475")
    ax.set(xlabel="environment steps", ylabel="mean return of last 20 episodes",
           title="REINFORCE on CartPole-v1, one line per seed", ylim=(0, 520))  # fmt: skip
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    p.add_argument("--skip-textbook", action="store_true", help="run the default Args only")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"), help="run dirs")
    p.add_argument("--results", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--img", default=os.path.join(ROOT, "docs", "img", "reinforce_curve.png"))
    p.add_argument("flags", nargs="*", help="extra reinforce.py flags for the default run")
    a = p.parse_args()
    configs = {DEFAULTS: a.flags}
    if not a.skip_textbook:
        configs[TEXTBOOK] = ["--baseline", "none", "--no-normalize-advantages"]
    results = {name: [] for name in configs}
    stamp = int(time.time())
    print("| configuration | seed | solved_at_step | solved_at_s | final_mean_return |")
    print("|---|---:|---:|---:|---:|")
    for seed in a.seeds:
        for i, (name, flags) in enumerate(configs.items()):
            r = run(seed, flags, os.path.join(a.out, f"reinforce_{stamp}_c{i}_seed{seed}"))
            results[name].append(r)
            print(f"| {name} | {seed} | {r['solved_at_step']} | {r['solved_at_s']} | "
                  f"{r['final_mean_return']:.1f} |", flush=True)  # fmt: skip

    rows = {name: stats(rs) for name, rs in results.items()}
    print(f"\n{len(a.seeds)} seeds, {time.strftime('%Y-%m-%d')}, {os.cpu_count()}-core CPU\n")
    print("| configuration | solved within 300k | steps to solve (median / min / max) "
          "| seconds to solve (median / min / max) |")  # fmt: skip
    print("|---|---|---|---|")
    for name, s in rows.items():
        print(f"| {name} | {s['solved_within_300k']} | {s['steps']} | {s['seconds']} |")
    d, t = rows[DEFAULTS], rows.get(TEXTBOOK)
    if t and d["median_steps"] and t["median_steps"]:
        print(f"\nmedian steps ratio (defaults / textbook): "
              f"{d['median_steps'] / t['median_steps']:.2f}")  # fmt: skip
        print(f"median seconds ratio (defaults / textbook): {d['median_s'] / t['median_s']:.2f}")

    os.makedirs(a.results, exist_ok=True)
    slim = {n: [{k: v for k, v in r.items() if k != "episodes"} for r in rs]
            for n, rs in results.items()}  # fmt: skip
    with open(os.path.join(a.results, "reinforce.json"), "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                   "flags": configs, "summary": rows, "runs": slim}, f, indent=1)  # fmt: skip
    colors = ["tab:blue", "tab:orange"]
    plot([(n, c, rs) for (n, rs), c in zip(results.items(), colors, strict=False)], a.img)


if __name__ == "__main__":
    main()
