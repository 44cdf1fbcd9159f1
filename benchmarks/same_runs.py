"""Prove a refactor of the RL scripts bit for bit (issue 30): short fixed-seed runs of every RL
script, then episodes.csv byte for byte and every tensor of model.pt with torch.equal.

    git worktree add --detach /tmp/before HEAD          # the code before the change
    python benchmarks/same_runs.py run /tmp/before /tmp/runs_before
    python benchmarks/same_runs.py run . /tmp/runs_after
    python benchmarks/same_runs.py compare /tmp/runs_before /tmp/runs_after

Bit-for-bit holds on one machine only (same CPU type, same versions)."""

import filecmp
import os
import subprocess
import sys

import torch

CONFIGS = {
    "ppo_clip": ["ppo_cartpole.py", "--total-timesteps", "8192"],
    "ppo_kl": ["ppo_cartpole.py", "--total-timesteps", "8192", "--loss-type", "kl_penalty"],
    "a2c": ["a2c.py", "--total-timesteps", "8192"],
    "reinforce": ["reinforce.py", "--total-timesteps", "8192"],
    "trpo": ["trpo.py", "--total-timesteps", "8192"],
    "ppoc_pendulum": ["ppo_continuous.py", "--env-id", "Pendulum-v1", "--total-timesteps", "8192"],
    "ppoc_hopper": ["ppo_continuous.py", "--env-id", "Hopper-v5", "--total-timesteps", "4096"],
    "trpoc_pendulum": ["trpo_continuous.py", "--total-timesteps", "8192"],
    "trpoc_hopper": ["trpo_continuous.py", "--env-id", "Hopper-v5", "--total-timesteps", "4096"],
}


def run(repo, out):
    for name, (script, *flags) in CONFIGS.items():
        folder = os.path.abspath(os.path.join(out, name))
        argv = [sys.executable, script, *flags, "--seed", "3", "--eval-episodes", "2",
                "--output-dir", folder, "--overwrite"]  # fmt: skip
        done = subprocess.run(argv, cwd=repo, capture_output=True, text=True)
        print(name, "ran" if done.returncode == 0 else f"FAILED: {done.stderr[-300:]}")


def tensors(tree, prefix=""):
    """Every tensor of a nested checkpoint, by its dotted path."""
    found = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            found |= tensors(value, f"{prefix}{key}.")
        elif torch.is_tensor(value):
            found[f"{prefix}{key}"] = value
    return found


def same(a, b):
    """(episodes.csv identical, every model.pt tensor identical) for two run folders."""
    csv = filecmp.cmp(f"{a}/episodes.csv", f"{b}/episodes.csv", shallow=False)
    ta, tb = (tensors(torch.load(f"{d}/model.pt", weights_only=True)) for d in (a, b))
    return csv, ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def compare(a, b):
    results = {name: same(f"{a}/{name}", f"{b}/{name}") for name in CONFIGS}
    for name, (csv, weights) in results.items():
        print(name, "identical" if csv and weights else f"DIFFERS csv={csv} weights={weights}")
    return all(all(r) for r in results.values())


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("run", "compare"):
        sys.exit(__doc__)
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3])
    else:
        sys.exit(0 if compare(sys.argv[2], sys.argv[3]) else 1)
