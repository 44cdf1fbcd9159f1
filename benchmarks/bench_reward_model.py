"""Benchmark of reward_model.py: default `--model-name tiny` runs on the CPU, one subprocess
per seed. Per run: held-out accuracy against the gold (VADER) order and against the simulated
annotators, the process's wall time (imports included) and peak resident memory (from
wait4's rusage). Target (issue 5): gold accuracy >= 0.90 in <= 60 s on a 2-core CPU.

    python benchmarks/bench_reward_model.py                  # seeds 1..10
    python benchmarks/bench_reward_model.py --seeds 1 2 3 -- --epochs 2   # flags for the script

Writes the raw results to benchmarks/results/reward_model.json, prints a Markdown table, and
plots the learning curves to docs/img/reward_model_curve.png.
The machine is shared: the load average at the start of each run is recorded beside it.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET_ACC, TARGET_S = 0.90, 60.0


def run_seed(seed, out_dir, extra):
    """One training run: its JSON summary plus the process's wall time and its own peak RSS
    (os.wait4's rusage; Linux reports ru_maxrss in KiB)."""
    out = os.path.join(out_dir, f"seed{seed}")
    cmd = [sys.executable, os.path.join(ROOT, "reward_model.py"), "--model-name", "tiny"]
    cmd += ["--no-cuda", "--seed", str(seed), "--output-dir", out, *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"seed {seed} failed with exit status {proc.returncode}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.update(
        process_wall_s=round(wall, 2),
        peak_rss_mb=round(usage.ru_maxrss / 1024, 1),
        # CPU seconds: what the run costs on an idle core, whatever else shares the machine.
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        load_avg_1min=round(load, 2),
    )
    return summary


def curve(run_dir):
    """(steps, batch label accuracy) and (steps, held-out gold accuracy) from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir)
    acc.Reload()
    train = [(e.step, e.value) for e in acc.Scalars("train/label_accuracy")]
    gold = [(e.step, e.value) for e in acc.Scalars("eval/gold_accuracy")]
    return train, gold


def plot(results, out_dir, path):
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in results:
        train, gold = curve(os.path.join(out_dir, f"seed{r['seed']}"))
        steps, acc = np.array(train).T
        k = 10  # a single batch of 32 is noisy: average 10 logged batches
        smooth = np.convolve(acc, np.ones(k) / k, mode="valid")
        line = ax.plot(steps[k - 1 :], smooth, alpha=0.6, lw=1)[0]
        ax.plot(*zip(*gold, strict=True), "o-", color=line.get_color(), label=f"seed {r['seed']}")
    ax.axhline(TARGET_ACC, color="k", ls="--", lw=0.8)
    ax.set_xlabel("gradient step")
    ax.set_ylabel("accuracy")
    ax.set_title(
        "tiny RM: training-batch accuracy vs annotators (lines, 10-batch mean), "
        "held-out vs gold (o)",
        fontsize=8,
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 11)))
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out", "reward_model"))
    parser.add_argument(
        "--results", default=os.path.join(ROOT, "benchmarks", "results", "reward_model.json")
    )
    parser.add_argument(
        "--plot",
        default=os.path.join(ROOT, "docs", "img", "reward_model_curve.png"),
        help="learning-curve PNG ('' = none)",
    )
    parser.add_argument("extra", nargs="*", help="flags passed on to reward_model.py (after --)")
    args = parser.parse_args()

    results = []
    for seed in args.seeds:
        r = run_seed(seed, args.out, args.extra)
        results.append(r)
        print(
            f"seed {seed}: gold {r['eval_gold_accuracy']:.3f} in {r['process_wall_s']:.1f}s "
            f"(load {r['load_avg_1min']})",
            flush=True,
        )

    print(
        "\n| seed | gold acc. | annotator acc. | wall (s) | CPU (s) | train (s) | peak RSS (MB) "
        "| load |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['seed']} | {r['eval_gold_accuracy']:.3f} | {r['eval_label_accuracy']:.3f} "
            f"| {r['process_wall_s']:.1f} | {r['cpu_s']:.1f} | {r['train_time_s']:.1f} "
            f"| {r['peak_rss_mb']:.0f} "
            f"| {r['load_avg_1min']:.1f} |"
        )
    gold = [r["eval_gold_accuracy"] for r in results]
    wall = [r["process_wall_s"] for r in results]
    cpu = [r["cpu_s"] for r in results]
    met = sum(g >= TARGET_ACC and w <= TARGET_S for g, w in zip(gold, wall, strict=True))
    print(
        f"\ngold accuracy median {statistics.median(gold):.3f} (min {min(gold):.3f}, max "
        f"{max(gold):.3f}); wall time median {statistics.median(wall):.1f}s (min "
        f"{min(wall):.1f}, max {max(wall):.1f}); CPU time median {statistics.median(cpu):.1f}s; "
        "peak RSS max "
        f"{max(r['peak_rss_mb'] for r in results):.0f} MB; target (gold >= {TARGET_ACC} "
        f"in <= {TARGET_S:.0f}s) met by {met}/{len(results)} runs"
    )
    os.makedirs(os.path.dirname(args.results), exist_ok=True)
    with open(args.results + ".tmp", "w") as f:
        json.dump(
            {
                "command": "python reward_model.py --model-name tiny --no-cuda --seed S "
                + " ".join(args.extra),
                "cpu_count": os.cpu_count(),
                "target": {"gold_accuracy": TARGET_ACC, "wall_s": TARGET_S},
                "runs": results,
            },
            f,
            indent=1,
        )
    os.replace(args.results + ".tmp", args.results)
    if args.plot:
        plot(results, args.out, args.plot)
        print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
