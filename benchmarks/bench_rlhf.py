"""Benchmark of rlhf_ppo_gpt2.py.

1. The built-in task with --model-name tiny and default Args, one subprocess per seed on
   the CPU: wall time and peak resident memory of each stage (SFT, RM, PPO), the gold
   score, RM score, KL and well-formed fraction of the SFT and the final policy, checked
   against the targets of the issue.
2. GPT-2-124M size (GPT2Config(), random weights: throughput needs no pretrained weights):
   one PPO iteration (rollout + update, default Args) in a subprocess of its own; tokens
   per second and peak memory.

    python benchmarks/bench_rlhf.py                # seed 1, then the GPT-2-size iteration
    python benchmarks/bench_rlhf.py --seeds 1 2 3 --skip-gpt2

Writes benchmarks/results/rlhf.json and docs/img/rlhf_curve.png.
"""

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "rlhf.json")
PLOT = os.path.join(ROOT, "docs", "img", "rlhf_curve.png")
STAGES = ("sft", "rm", "ppo")


def rss_mb(pid):
    """Resident memory of a process in MiB, from /proc (0 once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def run_tiny(seed, out_dir):
    """Run the script; attribute memory samples to the stage whose progress lines are
    printing ([sft], [rm], [ppo]); return the summary with per-stage peak memory."""
    cmd = [sys.executable, os.path.join(ROOT, "rlhf_ppo_gpt2.py"), "--model-name", "tiny",
           "--no-cuda", "--seed", str(seed), "--output-dir", out_dir]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    stage, peaks, done = ["sft"], dict.fromkeys(STAGES, 0.0), threading.Event()

    def sample():
        while not done.is_set():
            peaks[stage[0]] = max(peaks[stage[0]], rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    last = ""
    for line in proc.stdout:
        print("   ", line, end="", flush=True)
        for s in STAGES:
            if line.startswith(f"[{s}]"):
                stage[0] = s
        last = line
    proc.wait()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        sys.exit(f"error: seed {seed} exited with {proc.returncode}")
    summary = json.loads(last)
    summary |= {f"{s}_peak_rss_mb": round(peaks[s], 1) for s in STAGES}
    with open(os.path.join(out_dir, "ppo_metrics.csv")) as f:
        summary["curve"] = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    return summary


def gpt2_iteration(n_iterations):
    """Child process: PPO iterations of a GPT-2-124M-sized policy, value model, RM and
    reference (random weights), with the script's own functions and default Args."""
    import resource

    import numpy as np
    import torch

    sys.path.insert(0, ROOT)
    import rlhf_ppo_gpt2 as rl

    torch.manual_seed(0)
    args = rl.Args(model_name="gpt2")
    _, tokenizer = rl.load_gpt2(rl.GPT2LMHeadModel, "tiny")  # prompts only; ids < 50257
    config = rl.GPT2Config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    policy = rl.GPT2LMHeadModel(config).eval()
    reference = rl.GPT2LMHeadModel(config).eval().requires_grad_(False)
    reward_model = rl.RewardModel(rl.GPT2Model(config)).eval().requires_grad_(False)
    value_model = rl.ValueModel(reward_model).requires_grad_(True)
    optimizer = torch.optim.Adam(
        [*policy.parameters(), *value_model.parameters()], lr=args.learning_rate, eps=1e-5
    )
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n_iterations):
        prompts = [
            rl.PROMPTS[i] for i in rng.integers(len(rl.PROMPTS), size=args.rollout_batch_size)
        ]
        t0 = time.time()
        # The rollout of collect_rollout, with the RM reading the sampled tokens directly:
        # random weights emit arbitrary ids that the tiny tokenizer cannot decode.
        with torch.no_grad():
            q, qm, r, m, _ = rl.generate_responses(
                policy, tokenizer, prompts, args.max_new_tokens, args.temperature
            )
            logp = rl.token_logprobs(rl.sequence_logits(policy, q, qm, r, m), r, 1.0) * m
            ref_logp = rl.token_logprobs(rl.sequence_logits(reference, q, qm, r, m), r, 1.0) * m
            scores = reward_model(torch.cat([q, r], 1), torch.cat([qm, m], 1))
            values = rl.response_values(value_model, q, qm, r, m) * m
            rewards = rl.kl_shaped_rewards(scores, logp, ref_logp, m, args.init_kl_coef)
            adv, returns = rl.token_gae(rewards, values, m, args.gamma, args.gae_lambda)
        t1 = time.time()
        batch = {"q": q, "qm": qm, "r": r, "m": m, "logp": logp, "values": values,
                 "adv": rl.masked_whiten(adv, m), "returns": returns}  # fmt: skip
        stats = rl.ppo_update(args, policy, value_model, optimizer, batch)
        t2 = time.time()
        tokens = int(m.sum())
        out.append({"rollout_s": t1 - t0, "update_s": t2 - t1, "response_tokens": tokens,
                    "tokens_per_s": tokens / (t2 - t0),
                    "ratio_dev_first_mb": stats["ratio_dev_first_mb"]})  # fmt: skip
        print(json.dumps(out[-1]), file=sys.stderr, flush=True)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    print(json.dumps({"iterations": out, "peak_rss_mb": round(peak, 1),
                      "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
                      "threads": torch.get_num_threads(),
                      "params_millions": sum(p.numel() for p in policy.parameters()) / 1e6,
                      "rollout_batch_size": args.rollout_batch_size,
                      "max_new_tokens": args.max_new_tokens, "ppo_epochs": args.ppo_epochs,
                      "minibatch_size": args.minibatch_size}))  # fmt: skip


def plot(runs):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_gold, ax_kl, ax_wf) = plt.subplots(1, 3, figsize=(13, 3.6))
    for run in runs:
        it = [row["iteration"] for row in run["curve"]]
        label = f"seed {run['seed']}"
        ax_gold.plot(it, [row["gold"] for row in run["curve"]], label=label)
        ax_kl.plot(it, [row["kl"] for row in run["curve"]], label=label)
        ax_wf.plot(it, [row["well_formed"] for row in run["curve"]], label=label)
        ax_gold.axhline(run["sft_gold"], ls=":", c="grey")
    ax_kl.axhline(runs[0]["kl_target"], ls="--", c="k", label="KL target")
    ax_wf.axhline(0.9, ls="--", c="k", label="target 0.9")
    for ax, title in [(ax_gold, "gold score (VADER) of rollouts; dotted: SFT policy"),
                      (ax_kl, "KL(π‖π_ref), nats per response"),
                      (ax_wf, "well-formed fraction")]:  # fmt: skip
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("PPO iteration")
        ax.legend(fontsize=7)
    fig.suptitle("rlhf_ppo_gpt2.py --model-name tiny (built-in task, default Args)", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(PLOT), exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--seeds", type=int, nargs="*", default=[1], help="none: keep the last tiny results"
    )
    parser.add_argument(
        "--skip-gpt2", action="store_true", help="keep the last GPT-2-size result; do not rerun"
    )
    parser.add_argument("--gpt2-iterations", type=int, default=1)
    parser.add_argument("--gpt2-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.gpt2_child:
        return gpt2_iteration(args.gpt2_iterations)

    runs = []
    if not args.seeds:
        with open(RESULTS) as f:
            runs = json.load(f)["tiny"]
    for seed in args.seeds:
        print(f"## tiny, seed {seed}", flush=True)
        runs.append(run_tiny(seed, os.path.join(ROOT, "benchmarks", "out", f"rlhf_seed{seed}")))
    gpt2 = None
    if args.skip_gpt2 and os.path.exists(RESULTS):
        with open(RESULTS) as f:
            gpt2 = json.load(f).get("gpt2_124m_cpu")  # keep the last (slow) measurement
    if not args.skip_gpt2:
        print("## GPT-2-124M size, one PPO iteration on the CPU", flush=True)
        child = subprocess.run(
            [sys.executable, __file__, "--gpt2-child", "--gpt2-iterations",
             str(args.gpt2_iterations)],
            stdout=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
        gpt2 = json.loads(child.stdout.strip().splitlines()[-1])
        gpt2["date"] = time.strftime("%Y-%m-%d %H:%M")

    rows = [
        "| seed | SFT s | RM s | PPO s | total s | peak MiB (SFT/RM/PPO) | SFT gold | final gold "
        "| gain | SFT well-formed | final well-formed | final KL (target) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        r["targets_met"] = {
            "total_le_300s": r["wall_time_s"] <= 300,
            "sft_well_formed_ge_0.95": r["sft_well_formed"] >= 0.95,
            "gold_gain_ge_0.5": r["final_gold"] - r["sft_gold"] >= 0.5,
            "final_well_formed_ge_0.9": r["final_well_formed"] >= 0.9,
            "final_kl_le_target": r["final_kl"] <= r["kl_target"],
        }
        rows.append(
            f"| {r['seed']} | {r['sft_time_s']:.0f} | {r['rm_time_s']:.0f} | {r['ppo_time_s']:.0f} "
            f"| {r['wall_time_s']:.0f} | {r['sft_peak_rss_mb']:.0f}/{r['rm_peak_rss_mb']:.0f}/"
            f"{r['ppo_peak_rss_mb']:.0f} | {r['sft_gold']:+.3f} | {r['final_gold']:+.3f} "
            f"| {r['final_gold'] - r['sft_gold']:+.3f} | {r['sft_well_formed']:.3f} "
            f"| {r['final_well_formed']:.3f} | {r['final_kl']:.2f} ({r['kl_target']:g}) |"
        )
    print("\n".join(rows))
    for r in runs:
        missed = [k for k, ok in r["targets_met"].items() if not ok]
        print(f"seed {r['seed']}: " + ("all targets met" if not missed else f"MISSED {missed}"))
    if gpt2:
        best = max(gpt2["iterations"], key=lambda x: x["tokens_per_s"])
        print(
            f"GPT-2-124M size, CPU ({gpt2['threads']} threads): rollout {best['rollout_s']:.1f} s"
            f" + update {best['update_s']:.1f} s for {best['response_tokens']} response tokens"
            f" = {best['tokens_per_s']:.1f} tokens/s; peak RSS {gpt2['peak_rss_mb']:.0f} MiB"
        )
    results = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, shared with other jobs; no GPU",
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "tiny": runs,
        "gpt2_124m_cpu": gpt2,
        "gpt2_124m_gpu": None,  # no GPU was lent to this task
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(results, f, indent=1)
    plot(runs)
    print(f"wrote {RESULTS} and {PLOT}")


if __name__ == "__main__":
    main()
