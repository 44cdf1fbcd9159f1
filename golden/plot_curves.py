"""Draw the reference bands: python -m golden.plot_curves

For each script with curves in golden/curves/ (<script>_seed<S>.csv), plots the mean return
of the last 20 finished training episodes against environment steps: the min–max band and
the median across seeds, and each seed as a thin line, into docs/img/<script>_band.png.
matplotlib is a benchmark-only dependency (benchmarks/requirements.txt).

    python -m golden.plot_curves [--curves golden/curves] [--out docs/img]
    python -m golden.plot_curves --check runs/my_run/episodes.csv --script ppo_cartpole

--check judges one run against the reference runs of --script (see check()): the fraction of
the steps inside the band, and the verdict: the end of the run against the band of the
references' final returns, so that a run which solved and then collapsed is reported outside
(exit status 1).
"""

import argparse
import json
import re
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOLVED = {"CartPole-v1": 475, "Pendulum-v1": -200}  # thresholds on the last-20 mean
YLIM = {"CartPole-v1": (0, 510), "Pendulum-v1": (-1600, 0)}


def running_mean(path, window):
    """(steps, m) with m_i the mean return of episodes max(0, i−window+1)..i, i.e. of the
    last `window` episodes finished at step steps_i (fewer at the start)."""
    data = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    if data.shape[0] == 0 or data.shape[1] != 2:
        raise SystemExit(f"error: {path} has no episodes (global_step,episodic_return rows)")
    steps, returns = data[:, 0], data[:, 1]
    cumsum = np.concatenate([[0.0], np.cumsum(returns)])
    i = np.arange(len(returns))
    start = np.maximum(0, i - window + 1)
    return steps, (cumsum[i + 1] - cumsum[start]) / (i + 1 - start)


def on_grid(path, grid, window=20):
    """The running mean of an episodes.csv at the given steps: at each step, the value after
    the last episode that had ended by then (NaN before the first)."""
    steps, mean = running_mean(path, window)
    k = np.searchsorted(steps, grid, side="right") - 1
    return np.where(k >= 0, mean[np.maximum(k, 0)], np.nan)


def band(paths, window=20, points=300):
    """The curves of several seeds on one step grid (up to the shortest run), each held
    constant between its episode ends, and their min, median and max. NaN before a seed's
    first finished episode."""
    last_steps = [running_mean(p, window)[0][-1] for p in paths]
    grid = np.linspace(0, min(last_steps), points)
    y = np.array([on_grid(p, grid, window) for p in paths])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any episode
        return grid, y, np.nanmin(y, 0), np.nanmedian(y, 0), np.nanmax(y, 0)


def check(paths, run, window=20, end=0.2, q=0.1, solved=None):
    """Judge the episodes.csv `run` against the reference runs `paths`.

    inside: the fraction of the steps (where both have finished episodes) at which the run's
    last-`window` mean lies within the references' min–max band. That band widens to span
    every reference seed at every step (on CartPole, about 10 to 500 after the first solves),
    so it cannot see a collapse. Hence also
    end_inside: the fraction of the last `end` of the run's steps at which its last-`window`
    mean lies within the band of the references' final values [Q_q, max]: Q_q the q-quantile of
    the references' last-`window` means at their last episode (a reference seed that itself
    collapsed is not allowed to widen the band by itself; q = 0 gives the minimum). With
    `solved` (the environment's solved return), the band's lower edge is at most that: where
    every reference ends at 500 a run that stays above 475 is not called outside.
    ok: end_inside ≥ ½, the verdict. `inside` stays a figure to look at, not a verdict: where
    every reference sits at 500, the min–max band is the line 500, and a healthy run at 490
    would be "outside" it.
    """
    grid, _, lo, _, hi = band(paths, window)
    mine = on_grid(run, grid, window)
    seen = np.isfinite(lo) & np.isfinite(mine)
    inside = float(((mine[seen] >= lo[seen]) & (mine[seen] <= hi[seen])).mean())
    finals = [running_mean(p, window)[1][-1] for p in paths]
    end_lo, end_hi = float(np.quantile(finals, q)), float(max(finals))
    end_lo = end_lo if solved is None else min(end_lo, solved)
    steps, mean = running_mean(run, window)
    last = mean[steps >= (1 - end) * steps[-1]]
    end_inside = float(((last >= end_lo) & (last <= end_hi)).mean())
    return dict(inside=inside, end_inside=end_inside, end_band=(end_lo, end_hi),
                final=float(mean[-1]), ok=end_inside >= 0.5)  # fmt: skip


def plot(script, paths, out, window, extra="", env_id="CartPole-v1"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid, y, lo, med, hi = band(paths, window)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.fill_between(grid, lo, hi, alpha=0.25, label=f"min–max over {len(paths)} seeds")
    for row in y:
        ax.plot(grid, row, lw=0.5, alpha=0.5, color="C0")
    ax.plot(grid, med, lw=2, color="C0", label="median")
    if env_id in SOLVED:
        ax.axhline(SOLVED[env_id], ls="--", lw=1, color="gray", label=f"solved ({SOLVED[env_id]})")
    ax.set(xlabel="environment steps", ylabel=f"mean return of the last {window} episodes",
           title=f"{script}.py on {env_id}, " + (extra or "default configuration"),
           ylim=YLIM.get(env_id))  # fmt: skip
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = out / f"{script}_band.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", default=str(ROOT / "golden" / "curves"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "img"))
    parser.add_argument("--window", type=int, default=20, help="episodes in the running mean")
    parser.add_argument("--check", metavar="EPISODES_CSV", help="judge this run; plot nothing")
    parser.add_argument("--script", default="ppo_cartpole", help="--check: the references")
    args = parser.parse_args(argv)
    runs = defaultdict(list)
    for path in sorted(Path(args.curves).glob("*_seed*.csv")):
        runs[re.fullmatch(r"(.+)_seed\d+\.csv", path.name).group(1)].append(path)
    if not runs:
        raise SystemExit(f"error: no <script>_seed<S>.csv in {args.curves}")
    manifest = Path(args.curves) / "manifest.json"  # written by make_curves: flags used
    made = json.loads(manifest.read_text()) if manifest.exists() else {}
    if args.check:
        if args.script not in runs:
            raise SystemExit(f"error: --script {args.script}: no curves in {args.curves}")
        record = next((r for r in made.values() if r["script"] == args.script), {})
        env_id = (record.get("summary") or {}).get("env_id", "CartPole-v1")
        c = check(runs[args.script], args.check, args.window, solved=SOLVED.get(env_id))
        print(f"inside the reference band at {c['inside']:.0%} of the steps; over the last 20% "
              f"of the steps inside the band of the reference runs' final returns "
              f"[{c['end_band'][0]:.1f}, {c['end_band'][1]:.1f}] at {c['end_inside']:.0%} "
              f"(final {c['final']:.1f}): {'inside' if c['ok'] else 'OUTSIDE'}")  # fmt: skip
        raise SystemExit(0 if c["ok"] else 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for script, paths in sorted(runs.items()):
        record = next((r for r in made.values() if r["script"] == script), {})
        extra = record.get("made", {}).get("extra", "")
        env_id = (record.get("summary") or {}).get("env_id", "CartPole-v1")
        path = plot(script, paths, out, args.window, extra, env_id)
        print(f"{script}: {len(paths)} seeds -> {path}")


if __name__ == "__main__":
    main()
