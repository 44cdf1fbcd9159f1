"""The shared benchmark harness: seed sets, running a script and its peer alternately, the
solved rule, stability counts, tables, plots and the JSON results.

The scripts of this project are single files that import nothing of each other; the
benchmarks are not, and each `bench_*.py` holds only what is particular to its algorithm
(the peer's runner and hyperparameters, the budget, the threshold) and calls `benchmark()`.
The peers need `pip install -r benchmarks/requirements.txt`; every bench takes `--seeds`,
`--only`, `--out`, `--no-save` and `--resume`.

The seed protocol (CONTRIBUTING.md, benchmarks/README.md):
- TUNING_SEEDS are the only seeds any sweep or hyperparameter choice may use;
- HELD_OUT_SEEDS, disjoint from them, are what every benchmark, table and plot reports by
  default. `--seeds` may name others; the results then say which set they came from.
"""

import argparse
import csv
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNING_SEEDS = list(range(1, 13))
HELD_OUT_SEEDS = list(range(1001, 1021))
WINDOW = 20  # "solved" looks at the mean return of the last 20 finished training episodes

# Peers run as `python -c PEER_PREAMBLE + runner`. The callback applies the same rule to the
# peer's own training episodes as our scripts do, and records every episode, so that the
# harness can recompute steps to solve and stability from the episodes of both alike.
# `stop_at_solve` (argv[3] == "1") ends a peer's run once solved, which does not change its
# time to solve but hides whether it stays solved; stability needs the full budget.
PEER_PREAMBLE = r"""
import json, sys, time
from collections import deque
import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

seed, total, stop_at_solve, threshold = (int(sys.argv[1]), int(sys.argv[2]),
                                         sys.argv[3] == "1", float(sys.argv[4]))
torch.set_num_threads(1)
lin = lambda v: (lambda progress: progress * v)  # RL Zoo's lin_ schedules

class Episodes(BaseCallback):
    # Monitor (added by make_vec_env) puts info["episode"] at each episode's end.
    def _on_training_start(self):
        self.t0, self.recent, self.episodes, self.solved = time.time(), deque(maxlen=20), [], None
    def _on_step(self):
        for info in self.locals["infos"]:
            if "episode" in info:
                self.recent.append(info["episode"]["r"])
                self.episodes.append((self.num_timesteps, float(info["episode"]["r"])))
                if (self.solved is None and len(self.recent) == 20
                        and sum(self.recent) / 20 >= threshold):
                    self.solved = (self.num_timesteps, time.time() - self.t0)
                    if stop_at_solve:
                        return False
        return True

def evaluate_normalized(model, train_env, env_id, seed, episodes=10):
    # The final policy, deterministic, on fresh envs (seed + 10000, as our scripts), with the
    # training VecNormalize statistics frozen and rewards left unscaled.
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.vec_env import VecNormalize
    env = VecNormalize(make_vec_env(env_id, n_envs=1, seed=seed + 10_000), training=False,
                       norm_reward=False)
    env.obs_rms = train_env.obs_rms
    rets, _ = evaluate_policy(model, env, n_eval_episodes=episodes, deterministic=True,
                              return_episode_rewards=True)
    return {"eval_mean_return": float(np.mean(rets)), "eval_std_return": float(np.std(rets)),
            "eval_episodes": len(rets)}

def learn_and_report(model, t_start, eval_env=None, env_id=None, callback=None):
    # Train to the budget under the Episodes callback (or a subclass's `callback`) and print
    # the run as one JSON line; with eval_env (the training VecNormalize), also the training
    # seconds and the deterministic evaluation of the final policy.
    cb = callback or Episodes()
    model.learn(total_timesteps=total, callback=cb)
    extra = {}
    if eval_env is not None:
        extra["train_s"] = round(time.time() - t_start, 2)
        extra |= evaluate_normalized(model, eval_env, env_id, seed)
    step, secs = cb.solved or (None, None)
    print(json.dumps({"solved_at_step": step, "solved_at_s": secs, "episodes": cb.episodes,
                      "global_step": cb.num_timesteps,
                      "wall_time_s": round(time.time() - t_start, 2), **extra}))
"""


def loadavg():
    """The 1-minute load average, recorded beside every timing (the machines are shared)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except OSError:
        return None


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions():
    out = {"python": platform.python_version()}
    for name in ("torch", "gymnasium", "numpy", "stable_baselines3", "sb3_contrib"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            pass
    return out


def seed_set_name(seeds):
    if set(seeds) <= set(HELD_OUT_SEEDS):
        return "held-out"
    if set(seeds) <= set(TUNING_SEEDS):
        return "tuning"
    return "other"


def run_json(cmd, cwd=ROOT):
    """Run a command; return its last stdout line parsed as JSON, plus the load average."""
    load = loadavg()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(cmd[:3])} failed: {proc.stderr.strip()[-500:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["loadavg_before"] = load
    return result


def read_episodes(path):
    with open(path) as f:
        return [(int(r["global_step"]), float(r["episodic_return"])) for r in csv.DictReader(f)]


def run_script(script, seed, out_dir, extra=()):
    """One run of one of our scripts, on the CPU, with its episodes read from episodes.csv."""
    out = os.path.join(out_dir, f"{os.path.splitext(script)[0]}_seed{seed}")
    # --eval-episodes 0: the scripts evaluate 10 episodes after training by default (issue 30);
    # the benchmarks time training alone, and evaluate a saved checkpoint apart.
    cmd = [sys.executable, script, "--no-cuda", "--seed", str(seed), "--output-dir", out,
           "--eval-episodes=0"]  # fmt: skip
    result = run_json(cmd + list(extra))
    result["episodes"] = read_episodes(os.path.join(out, "episodes.csv"))
    result["output_dir"] = os.path.relpath(out, ROOT)  # no absolute paths in the results
    return result


def run_script_final(script, seed, out_dir, checkpoint="model.pt", extra=(), episodes=10):
    """run_script to the budget, then `--eval-checkpoint` of its saved checkpoint in a second
    process: `episodes` deterministic episodes with the saved observation statistics frozen.
    train_s is the training run's own wall time, evaluation not included."""
    result = run_script(script, seed, out_dir, extra)
    env = [x for x in extra if x.startswith("--env-id=")]
    ckpt = os.path.join(ROOT, result["output_dir"], checkpoint)
    cmd = [sys.executable, script, "--no-cuda", "--seed", str(seed), *env,
           "--eval-checkpoint", ckpt, "--eval-episodes", str(episodes)]  # fmt: skip
    ev = run_json(cmd)
    result["train_s"] = result["wall_time_s"]
    for key in ("eval_mean_return", "eval_std_return", "eval_episodes"):
        result[key] = ev[key]
    return result


def pop_option(name, default, choices):
    """Take `name VALUE` (or name=VALUE) out of sys.argv before the shared parser sees it: a
    benchmark's own choice, such as the environment."""
    argv = sys.argv
    for i, x in enumerate(argv):
        if x == name and i + 1 < len(argv):
            value = argv[i + 1]
            del argv[i : i + 2]
            break
        if x.startswith(name + "="):
            value = x.split("=", 1)[1]
            del argv[i]
            break
    else:
        value = default
    if value not in choices:
        sys.exit(f"error: {name} must be one of {', '.join(choices)}, not {value!r}")
    return value


def run_peer(runner, seed, budget, threshold, stop_at_solve=False):
    """One run of a peer (SB3 and friends): PEER_PREAMBLE + runner as `python -c`."""
    args = [str(seed), str(budget), "1" if stop_at_solve else "0", str(threshold)]
    return run_json([sys.executable, "-c", PEER_PREAMBLE + runner, *args])


def last_mean(episodes, window=WINDOW):
    """Mean return of the last `window` episodes after each episode: [(step, mean)]."""
    steps = [s for s, _ in episodes]
    rets = np.array([r for _, r in episodes], dtype=float)
    if len(rets) < window:
        return []
    means = np.convolve(rets, np.ones(window) / window, "valid")
    return list(zip(steps[window - 1 :], means.tolist(), strict=True))


def solved_step(episodes, threshold, window=WINDOW):
    """The first step at which the last-`window` mean reaches the threshold, or None."""
    return next((s for s, m in last_mean(episodes, window) if m >= threshold), None)


def stability(episodes, threshold, floor):
    """(held, ended): whether the last-20 mean never fell below `floor` after first reaching
    `threshold`, and whether it ends at or above `threshold`. Both False if never solved."""
    means = last_mean(episodes)
    first = next((i for i, (_, m) in enumerate(means) if m >= threshold), None)
    if first is None:
        return False, False
    held = all(m >= floor for _, m in means[first:])
    return held, means[-1][1] >= threshold


def summarize(results, budget, threshold, floor):
    """Solved fraction within the budget, median/min/max steps and seconds to solve, and the
    two stability counts. Medians are over the solved seeds; the fraction says how many."""
    steps = [r["solved_at_step"] for r in results if r["solved_at_step"] is not None]
    secs = [r["solved_at_s"] for r in results if r["solved_at_s"] is not None]
    stab = [stability(r["episodes"], threshold, floor) for r in results]

    def mmm(x, fmt):
        return " / ".join(fmt.format(f(x)) for f in (statistics.median, min, max)) if x else "-"

    return {
        "solved": f"{sum(s <= budget for s in steps)}/{len(results)}",
        "steps": mmm(steps, "{:,.0f}"),
        "seconds": mmm(secs, "{:.2f}"),
        "median_steps": statistics.median(steps) if steps else None,
        "median_s": statistics.median(secs) if secs else None,
        "held_after_solve": f"{sum(h for h, _ in stab)}/{len(results)}",
        "ended_solved": f"{sum(e for _, e in stab)}/{len(results)}",
        "final_mean": [
            round(m[-1][1], 1) if (m := last_mean(r["episodes"])) else None for r in results
        ],
    }


def bootstrap(results, key, n=10_000, seed=0):
    """Percentile 95% intervals of each implementation's median `key` (an unsolved seed counts
    as infinitely slow) and of the ratio first / other, resampling the seeds with replacement
    (the same seeds for both sides: the runs are paired by seed)."""
    names = list(results)
    x = {k: np.array([np.inf if r[key] is None else r[key] for r in results[k]]) for k in names}
    idx = np.random.default_rng(seed).integers(0, len(x[names[0]]), (n, len(x[names[0]])))
    med = {k: np.median(v[idx], axis=1) for k, v in x.items()}

    def ci(v):  # an end among unsolved medians is inf; a ratio inf/inf (nan) is left out
        with np.errstate(invalid="ignore"):
            ends = np.nanpercentile(v, [2.5, 97.5])
        return [float(e) for e in np.nan_to_num(ends, nan=np.inf)]

    out = {k: {"median": float(np.median(v)), "ci95": ci(med[k])} for k, v in x.items()}
    with np.errstate(invalid="ignore"):  # inf - inf and inf / inf, handled in ci()
        for other in names[1:]:
            point = float(np.median(x[names[0]]) / np.median(x[other]))
            out[f"ratio_over_{other}"] = {"ratio": point, "ci95": ci(med[names[0]] / med[other])}
    return out


def plot(curves, path, budget, threshold, title, ylim, solved_panel=True):
    """Left: the last-20 mean of every seed, with the median where every seed still runs.
    Right (solved_panel): the fraction of seeds solved against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if solved_panel:
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    grid = np.linspace(0, budget, 301)
    colors = iter(["tab:blue", "tab:orange", "tab:green", "tab:red"])
    for name, results in curves.items():
        color, lines = next(colors), []
        for r in results:
            means = last_mean(r["episodes"])
            if not means:
                continue
            s, m = np.array(means).T
            lines.append(np.interp(grid, s, m, left=np.nan, right=np.nan))
            ax.plot(s, m, color=color, alpha=0.15 if solved_panel else 0.35, lw=0.8)
        if lines:
            ax.plot(grid, np.median(lines, 0), color=color, lw=2, label=f"{name} (median)")
        if solved_panel:
            solved = sorted(r["solved_at_step"] for r in results if r["solved_at_step"] is not None)
            frac = np.arange(len(solved) + 1) / len(results)
            ax2.step([0, *solved, budget], [*frac, frac[-1]], where="post", color=color, label=name)
    if threshold is not None:
        ax.axhline(threshold, color="k", ls="--", lw=1, label=f"solved: {threshold:g}")
    ax.set(
        xlabel="environment steps", ylabel="mean return of last 20 episodes", title=title, ylim=ylim
    )
    ax.legend(loc="lower right" if solved_panel else "upper left", fontsize=8)
    if solved_panel:
        ax2.set(
            xlabel="environment steps",
            ylabel="fraction of seeds solved",
            ylim=(0, 1.05),
            title="seeds that met the solved rule",
        )
        ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def bench_args(impls):
    """The command line every benchmark shares: --seeds, --only, --out, --no-save."""
    p = argparse.ArgumentParser(description=sys.modules["__main__"].__doc__.split("\n")[0])
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=HELD_OUT_SEEDS,
        help="default: the 20 held-out seeds 1001..1020",
    )
    p.add_argument(
        "--only",
        nargs="+",
        default=list(impls),
        choices=list(impls),
        help="run only these implementations",
    )
    p.add_argument(
        "--name", help="results/NAME.json, docs/img/NAME_curve.png; default: the bench's"
    )
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "out"))
    p.add_argument("--no-save", action="store_true", help="print only; write no results/plot")
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs an interrupted benchmark already finished (kept in --out/runs)",
    )
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    return a


def run_alternating(impls, a, describe):
    """Every implementation on every seed, alternating seed by seed so that drifts in the
    machine's load hit all alike; describe(r) is the progress line of one run."""
    results = {label: [] for label in a.only}
    cache = os.path.join(a.out, "runs")
    os.makedirs(cache, exist_ok=True)
    for seed in a.seeds:
        for label in a.only:
            # Every finished run is kept, so that --resume after an interrupt (a long MuJoCo
            # benchmark outliving the session) repeats only the runs that did not finish.
            path = os.path.join(cache, re.sub(r"[^A-Za-z0-9.]+", "_", label) + f"_{seed}.json")
            if a.resume and os.path.exists(path):
                with open(path) as f:
                    r = json.load(f)
            else:
                r = impls[label](seed, a.out)
                r["seed"] = seed
                with open(path + ".tmp", "w") as f:
                    json.dump(r, f)
                os.replace(path + ".tmp", path)
            results[label].append(r)
            print(f"seed {seed} {label}: {describe(r)} load={r['loadavg_before']}", flush=True)
    return results


def machine_line(a, results):
    loads = [r["loadavg_before"] for rs in results.values() for r in rs]
    print(
        f"\n{len(a.seeds)} {seed_set_name(a.seeds)} seeds, {time.strftime('%Y-%m-%d')}, "
        f"{cpu_model()}, load average {min(loads):.1f}-{max(loads):.1f}\n"
    )
    return [min(loads), max(loads)]


def save_results(name, a, results, loads, extra, title, **plot_args):
    """benchmarks/results/<name>.json (no episodes, no absolute paths), the full episode lists
    in --out, and docs/img/<name>_curve.png titled with the seed set."""
    slim = {
        n: [{k: v for k, v in r.items() if k != "episodes"} for r in rs]
        for n, rs in results.items()
    }
    payload = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seeds": a.seeds,
        "seed_set": seed_set_name(a.seeds),
        **extra,
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "versions": versions(),
            "loadavg_min_max": loads,
        },
        "runs": slim,
    }
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", f"{name}.json"), "w") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(a.out, f"{name}_runs_with_episodes.json"), "w") as f:
        json.dump(results, f)
    title = f"{title}, {seed_set_name(a.seeds)} seeds, one line per seed"
    plot(results, os.path.join(ROOT, "docs", "img", f"{name}_curve.png"), title=title, **plot_args)


def benchmark(
    name, impls, budget, threshold=475.0, floor=400.0, title="CartPole-v1", ylim=(0, 520)
):
    """Run every implementation on every seed (run_alternating); print the per-seed and
    summary tables and the ratios of the first implementation to each other; write
    benchmarks/results/<name>.json and docs/img/<name>_curve.png.

    impls: {label: run(seed, out_dir) -> dict with solved_at_step, solved_at_s, episodes}.
    """
    a = bench_args(impls)
    name = a.name or name
    print(f"{name}: {len(a.seeds)} {seed_set_name(a.seeds)} seeds {a.seeds}", flush=True)

    def solve(r):
        # Steps to solve from the episodes, by one rule for every implementation.
        r["solved_at_step"] = solved_step(r["episodes"], threshold)
        if r["solved_at_step"] is None:
            r["solved_at_s"] = None
        return f"solved_at_step={r['solved_at_step']} solved_at_s={r['solved_at_s']}"

    results = run_alternating(impls, a, solve)

    def cell(r):
        if r["solved_at_step"] is None:
            return "not solved | -"
        secs = "-" if r["solved_at_s"] is None else f"{r['solved_at_s']:.2f}"
        return f"{r['solved_at_step']:,} | {secs}"

    loads = machine_line(a, results)
    print("| seed | " + " | ".join(f"{n}: steps | {n}: s" for n in results) + " |")
    print("|---" * (1 + 2 * len(results)) + "|")
    for i, seed in enumerate(a.seeds):
        print(f"| {seed} | " + " | ".join(cell(rs[i]) for rs in results.values()) + " |")

    rows = {n: summarize(rs, budget, threshold, floor) for n, rs in results.items()}
    print(
        f"\n| implementation | solved within {budget:,} | steps to solve (median / min / "
        f"max) | seconds to solve (median / min / max) | last-20 mean never < {floor:g} "
        f"after solving | ends ≥ {threshold:g} |"
    )
    print("|---|---|---|---|---|---|")
    for n, s in rows.items():
        print(
            f"| {n} | {s['solved']} | {s['steps']} | {s['seconds']} | "
            f"{s['held_after_solve']} | {s['ended_solved']} |"
        )
    ratios = {}
    first, *others = rows

    def ratio(key, other):
        o, b = rows[first][key], rows[other][key]
        return round(o / b, 3) if o and b else None

    for other in others:
        ratios[other] = {"median_steps": ratio("median_steps", other),
                         "median_s": ratio("median_s", other)}  # fmt: skip
        print(f"\n{first} / {other}: median steps ratio {ratios[other]['median_steps']}, "
              f"median seconds ratio {ratios[other]['median_s']}")  # fmt: skip
    extra = {
        "budget": budget,
        "threshold": threshold,
        "summary": rows,
        "ratios_first_over_other": ratios,
    }
    if len(results) > 1:  # medians of heavy-tailed steps need their uncertainty stated
        extra["bootstrap_95"] = {
            k: bootstrap(results, k) for k in ("solved_at_step", "solved_at_s")
        }
        print("\nbootstrap 95% intervals (seeds resampled 10,000 times, paired by seed):")
        for key, b in extra["bootstrap_95"].items():
            for label, v in b.items():
                point = v.get("median", v.get("ratio"))
                print(f"  {key} {label}: {point:,.3f} [{v['ci95'][0]:,.3f}, {v['ci95'][1]:,.3f}]")
    if a.no_save:
        return results, rows
    save_results(
        name, a, results, loads, extra, title, budget=budget, threshold=threshold, ylim=ylim
    )
    return results, rows


def script_vs_peer(name, script, peer_label, peer_runner, budget):
    """benchmark() on CartPole-v1 of `script` with its default Args against one peer runner,
    both to the full `budget`."""
    impls = {
        script: lambda seed, out: run_script(script, seed, out),
        peer_label: lambda seed, out: run_peer(peer_runner, seed, budget, 475.0),
    }
    benchmark(name, impls, budget)


def num(x):
    """A return for a table: thousands separated, no decimals; '-' for none."""
    return "-" if x is None else f"{x:,.0f}"


def summarize_final(results):
    """For a fixed budget with no solved rule (MuJoCo): over the seeds, the mean ± std and the
    minimum of the final last-20 training mean and of the deterministic evaluation mean, and
    the median training seconds."""

    def stats(x):
        x = [v for v in x if v is not None]
        if not x:
            return None
        return {"mean": float(np.mean(x)), "std": float(np.std(x)), "min": float(min(x))}

    return {
        "final_last20": stats(
            [m[-1][1] if (m := last_mean(r["episodes"])) else None for r in results]
        ),  # fmt: skip
        "eval": stats([r["eval_mean_return"] for r in results]),
        "median_train_s": statistics.median(r["train_s"] for r in results),
    }


def benchmark_final(name, impls, budget, title, ylim=None):
    """The fixed-budget benchmark (MuJoCo): run every implementation on every seed
    (run_alternating) to `budget` steps, then a deterministic evaluation of the final policy
    with its frozen observation statistics. Print per-seed and summary tables and the ratio
    of the first implementation's median training seconds to each other's.

    impls: {label: run(seed, out_dir) -> dict with episodes, train_s, eval_mean_return,
    eval_std_return}. The last-20 mean is recomputed from the episodes, one rule for all.
    """
    a = bench_args(impls)
    name = a.name or name
    print(f"{name}: {len(a.seeds)} {seed_set_name(a.seeds)} seeds {a.seeds}", flush=True)

    def final(r):
        m = last_mean(r["episodes"])
        r["final_last20"] = round(m[-1][1], 1) if m else None
        return (f"last-20 {r['final_last20']} eval {r['eval_mean_return']:.1f} ± "
                f"{r['eval_std_return']:.1f} train {r['train_s']:.0f} s")  # fmt: skip

    results = run_alternating(impls, a, final)
    loads = machine_line(a, results)
    print("| seed | " + " | ".join(f"{n}: last-20 | eval | train s" for n in results) + " |")
    print("|---" * (1 + 3 * len(results)) + "|")
    for i, seed in enumerate(a.seeds):
        cells = [f"{num(r['final_last20'])} | {num(r['eval_mean_return'])} ± "
                 f"{num(r['eval_std_return'])} | {r['train_s']:.0f}"
                 for r in (rs[i] for rs in results.values())]  # fmt: skip
        print(f"| {seed} | " + " | ".join(cells) + " |")

    rows = {n: summarize_final(rs) for n, rs in results.items()}
    print(f"\n| implementation | last-20 training mean at {budget:,} (mean ± std / min) | "
          "deterministic eval (mean ± std / min) | training seconds (median) |")  # fmt: skip
    print("|---|---|---|---|")
    for n, s in rows.items():
        f, e = (s[k] or dict.fromkeys(("mean", "std", "min")) for k in ("final_last20", "eval"))
        print(
            f"| {n} | {num(f['mean'])} ± {num(f['std'])} / {num(f['min'])} | "
            f"{num(e['mean'])} ± {num(e['std'])} / {num(e['min'])} | {s['median_train_s']:.0f} |"
        )
    first, *others = rows
    ratios = {o: round(rows[first]["median_train_s"] / rows[o]["median_train_s"], 3)
              for o in others}  # fmt: skip
    for o, v in ratios.items():
        print(f"\n{first} / {o}: median training seconds ratio {v}")
    if a.no_save:
        return results, rows
    extra = {"budget": budget, "summary": rows, "train_s_ratio_first_over_other": ratios}
    save_results(
        name, a, results, loads, extra, title, budget=budget, threshold=None, ylim=ylim,
        solved_panel=False,
    )  # fmt: skip
    return results, rows


PENDULUM_BUDGET, MUJOCO_BUDGET = 100_000, 1_000_000


def continuous_benchmark(script, checkpoint, peer, pendulum_flags, pendulum_runner, mujoco):
    """The command line of the continuous-control benchmarks. `--env-id Pendulum-v1` (the
    default): the solved rule (last-20 mean ≥ −200) within 100k steps on the held-out seeds
    1001..1010. `--env-id` one of `mujoco`'s ids: the fixed 1M-step benchmark_final on
    1001..1003. mujoco = {env_id: (our extra flags, the peer's runner)}; `peer` names it."""
    env_id = pop_option("--env-id", "Pendulum-v1", ["Pendulum-v1", *mujoco])
    stem = os.path.splitext(script)[0]
    if "--seeds" not in sys.argv:
        seeds = HELD_OUT_SEEDS[:10] if env_id == "Pendulum-v1" else HELD_OUT_SEEDS[:3]
        sys.argv[1:1] = ["--seeds", *map(str, seeds)]
    if env_id == "Pendulum-v1":
        budget = PENDULUM_BUDGET
        impls = {
            script: lambda s, o: run_script(script, s, o, pendulum_flags),
            f"{peer} (RL Zoo, gSDE)": lambda s, o: run_peer(pendulum_runner, s, budget, -200.0),
        }
        return benchmark(f"{stem}_pendulum", impls, PENDULUM_BUDGET, threshold=-200.0,
                         floor=-400.0, title="Pendulum-v1", ylim=(-1600, 0))  # fmt: skip
    flags, runner = mujoco[env_id]
    flags = [f"--env-id={env_id}", f"--total-timesteps={MUJOCO_BUDGET}", *flags]
    impls = {
        script: lambda s, o: run_script_final(script, s, o, checkpoint, flags),
        f"{peer} (RL Zoo)": lambda s, o: run_peer(runner, s, MUJOCO_BUDGET, float("inf")),
    }
    name = f"{stem}_{env_id.split('-')[0].lower()}"
    return benchmark_final(name, impls, MUJOCO_BUDGET, title=env_id)
