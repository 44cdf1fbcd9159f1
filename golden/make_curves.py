"""Reference learning curves: python -m golden.make_curves

Runs each CartPole script in its DEFAULT configuration (plus only --no-cuda, --seed and
--output-dir) for several seeds, copies each run's episodes.csv (global_step,episodic_return)
to golden/curves/<script>_seed<S>.csv, and writes golden/curves/README.md with the exact
commands, the date, the git commit, the CPU model, the library versions and each run's
summary. CPU runs are bit-for-bit reproducible per seed on one machine, so --jobs changes the
wall time only; on another CPU type they diverge after a few hundred episodes (compare bands).

    python -m golden.make_curves                              # 4 scripts x held-out seeds
    python -m golden.make_curves --from-bench benchmarks/out/*_runs_with_episodes.json
    python -m golden.make_curves --scripts trpo --seeds 1 2 3 4 5 6 7 8 9 10
    python -m golden.make_curves --out /tmp/c --seeds 1 2 --extra "--total-timesteps 2000"

--extra is for trying this tool out; curves made with it are not default-configuration
curves, and the README says so. Draw the bands with python -m golden.plot_curves.
"""

import argparse
import datetime
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("ppo_cartpole", "reinforce", "trpo", "a2c")  # the default set, CartPole-v1
# On request only: ppo_continuous with --extra giving its documented Pendulum-v1 flags
# (README); trpo_continuous in its default configuration, which is Pendulum-v1.
OTHER_SCRIPTS = ("ppo_continuous", "trpo_continuous")


def command(script, seed, output_dir, extra, python=sys.executable):
    return [python, f"{script}.py", "--no-cuda", "--seed", str(seed),
            "--output-dir", str(output_dir), *shlex.split(extra)]  # fmt: skip


def run_one(script, seed, work, out, extra):
    """Run one seed; copy its episode log to out/<script>_seed<S>.csv; return its record."""
    run_dir = work / f"{script}_seed{seed}"
    cmd = command(script, seed, run_dir, extra)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    # The README shows the command with a stable output directory in place of the temporary one.
    shown = shlex.join(command(script, seed, f"runs/curves/{script}_seed{seed}", extra, "python"))
    record = dict(script=script, seed=seed, command=shown, returncode=proc.returncode)
    if proc.returncode != 0:
        record["error"] = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return record
    record["summary"] = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.copyfile(run_dir / "episodes.csv", out / f"{script}_seed{seed}.csv")
    return record


def from_bench(script, seed, runs, out):
    """The record of one seed's run taken from a benchmark's runs (the same command, run by
    benchmarks/harness.py): its episodes go to out/<script>_seed<S>.csv."""
    r = next(r for r in runs[f"{script}.py"] if r["seed"] == seed)
    with open(out / f"{script}_seed{seed}.csv", "w") as f:
        f.write("global_step,episodic_return\n")
        f.writelines(f"{s},{ret:g}\n" for s, ret in r["episodes"])
    shown = shlex.join(command(script, seed, f"runs/curves/{script}_seed{seed}", "", "python"))
    keys = ("global_step", "solved_at_step", "final_mean_return", "wall_time_s")
    summary = {k: r.get(k) for k in keys}
    return dict(script=script, seed=seed, command=shown, returncode=0, summary=summary)


def cpu_model():
    """The CPU that made the curves: floating point, and so the curves, differ across types."""
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                    platform.machine())  # fmt: skip


def git(*args):
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def versions():
    import gymnasium
    import numpy
    import torch

    return dict(python=platform.python_version(), torch=torch.__version__,
                gymnasium=gymnasium.__version__, numpy=numpy.__version__,
                cpu=cpu_model())  # fmt: skip


def write_readme(out, manifest):
    lines = [
        "# Reference learning curves",
        "",
        "One CSV per script and seed: `global_step,episodic_return`, one row per finished "
        "training episode (the script's own `episodes.csv`). Written by "
        "`python -m golden.make_curves`; bands drawn by `python -m golden.plot_curves` "
        "(docs/img/<script>_band.png). To compare an implementation, compute the mean return "
        "of its last 20 finished episodes against environment steps and check that it stays "
        "inside the band these seeds span (see docs/golden.md). Steps are each script's own "
        "`global_step`: ppo_cartpole, trpo and a2c count every vector-env step (num_envs per step, "
        "the autoreset steps included); reinforce counts real transitions only.",
        "",
        "The seeds are the held-out seeds 1001-1020 (see benchmarks/README.md), unless a "
        "section below says otherwise. A curve is bit-for-bit reproducible only on the same "
        "CPU type with the same library versions (each section names both); on another CPU "
        "the same seed diverges after a few hundred episodes, so compare against the band.",
        "",
    ]
    for script in sorted({r["script"] for r in manifest.values()}):
        runs = sorted((r for r in manifest.values() if r["script"] == script),
                      key=lambda r: r["seed"])  # fmt: skip
        meta = runs[0]["made"]
        lines += [
            f"## {script}.py",
            "",
            f"Made {meta['date']} at commit `{meta['commit']}`"
            + (" (with uncommitted changes to the scripts)" if meta["dirty"] else "")
            + f"; {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}; seeds "
            + ", ".join(str(r["seed"]) for r in runs)
            + ".",
            "",
        ]
        if meta["extra"]:
            lines += [f"**Not the default configuration**: extra flags `{meta['extra']}`.", ""]
        lines += ["```sh", *[r["command"] for r in runs], "```", "",
                  "| seed | episodes | global_step | solved_at_step | final_mean_return | "
                  "wall_time_s |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in runs:
            s = r.get("summary")
            if s is None:
                lines.append(f"| {r['seed']} | failed: {r.get('error', '')} | | | | |")
                continue
            n = (out / f"{script}_seed{r['seed']}.csv").read_text().count("\n") - 1
            solved = "never" if s["solved_at_step"] is None else s["solved_at_step"]
            lines.append(f"| {r['seed']} | {n} | {s['global_step']} | {solved} | "
                         f"{s['final_mean_return']} | {s['wall_time_s']} |")  # fmt: skip
        lines.append("")
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS + OTHER_SCRIPTS
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=list(range(1001, 1021)),
                        help="default: the 20 held-out seeds")  # fmt: skip
    parser.add_argument("--from-bench", nargs="+", default=[], metavar="RUNS",
                        help="take the runs from benchmarks/out/<name>_runs_with_episodes.json "
                        "(made by the benchmark at this commit) instead of running")  # fmt: skip
    parser.add_argument("--out", default=str(ROOT / "golden" / "curves"))
    parser.add_argument("--extra", default="", help="flags added to every run (testing only)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (1 torch thread each)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for script in args.scripts:  # a script's old curves go, so its seeds stay one set
        for path in out.glob(f"{script}_seed*.csv"):
            path.unlink()
        manifest = {k: v for k, v in manifest.items() if v["script"] != script}
    made = dict(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        commit=git("rev-parse", "HEAD"),
        dirty=bool(git("status", "--porcelain", "--", *[f"{s}.py" for s in args.scripts])),
        versions=versions(),
        extra=args.extra,
    )
    jobs = [(script, seed) for script in args.scripts for seed in args.seeds]
    runs = {k: v for path in args.from_bench for k, v in json.loads(Path(path).read_text()).items()}
    with tempfile.TemporaryDirectory(prefix="curves_") as work:
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            futures = [pool.submit(from_bench, s, seed, runs, out) if runs else
                       pool.submit(run_one, s, seed, Path(work), out, args.extra)
                       for s, seed in jobs]  # fmt: skip
            failed = 0
            for future in futures:
                record = future.result()
                record["made"] = made
                manifest[f"{record['script']}_seed{record['seed']}"] = record
                s = record.get("summary") or {}
                failed += record["returncode"] != 0
                print(f"{record['script']} seed {record['seed']}: "
                      + (f"solved_at_step={s.get('solved_at_step')} "
                         f"final_mean_return={s.get('final_mean_return')} "
                         f"wall_time_s={s.get('wall_time_s')}" if s else record["error"]),
                      flush=True)  # fmt: skip
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    write_readme(out, manifest)
    print(f"wrote {len(jobs) - failed} curves and README.md to {out}")
    if failed:
        sys.exit(f"error: {failed} run(s) failed; see {out / 'README.md'}")


if __name__ == "__main__":
    main()
