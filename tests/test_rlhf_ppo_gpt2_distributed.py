"""Data parallelism of rlhf_ppo_gpt2.py under torchrun, tested on the CPU with gloo.

Each equivalence test runs a job once in this process (a plain run: no process group) and
once in 2 processes started by torch.multiprocessing with a gloo group, on the same global
batch and from the same weights, and compares what they produced: one PPO update, one SFT
step and one RM step must give the same parameters to float tolerance, and the global
statistics (advantage whitening, RM normalisation) must equal those of the concatenated
batch. A short torchrun run of the whole script checks that only rank 0 writes files and
prints the JSON summary, and that its checkpoint reloads in a plain process."""

import copy
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import GPT2LMHeadModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import rlhf_ppo_gpt2 as rl  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_policy():
    torch.manual_seed(0)  # the same initial weights in every process
    return rl.load_gpt2(GPT2LMHeadModel, "tiny")


def global_batch(policy, tokenizer):
    """8 left-padded prompts and 8 responses of different lengths, with the rollout-time
    log-probs, values, returns and raw advantages: deterministic, the same in every process."""
    g = torch.Generator().manual_seed(1)
    B, P, T, pad = 8, 4, 6, tokenizer.pad_token_id
    q = torch.randint(1, len(tokenizer), (B, P), generator=g)
    qm = (torch.arange(P)[None] >= torch.tensor([0, 1, 2, 0, 3, 1, 0, 2])[:, None]).long()
    r = torch.randint(1, len(tokenizer), (B, T), generator=g)
    m = (torch.arange(T)[None] < torch.tensor([6, 2, 5, 1, 4, 6, 3, 2])[:, None]).long()
    q, r = q.masked_fill(qm == 0, pad), r.masked_fill(m == 0, pad)
    with torch.no_grad():
        logp = rl.token_logprobs(rl.sequence_logits(policy, q, qm, r, m), r, 1.0) * m
    batch = {"q": q, "qm": qm, "r": r, "m": m, "logp": logp}
    for key in ("adv", "values", "returns"):
        batch[key] = torch.randn(B, T, generator=g) * m
    return batch


def ppo_job(**flags):
    """One PPO update (1 epoch, one global minibatch of 8) on this rank's share of the batch,
    after whitening the advantages with global statistics."""
    policy, tokenizer = tiny_policy()
    value_model = rl.ValueModel(rl.RewardModel(policy.transformer))
    full = global_batch(policy, tokenizer)
    mine = torch.as_tensor(rl.my_share(8))
    batch = {k: v[mine] for k, v in full.items()}
    batch["adv"] = rl.global_masked_whiten(batch["adv"], batch["m"])
    args = rl.Args(model_name="tiny", rollout_batch_size=8, minibatch_size=8, ppo_epochs=1, **flags)
    params = [*policy.parameters(), *value_model.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3, eps=args.adam_eps)
    rl.ppo_update(args, rl.data_parallel(policy), rl.data_parallel(value_model), optimizer, batch)
    return {
        "params": [p.detach().clone() for p in params],
        "whitened": torch.cat(rl.all_gather_list([batch["adv"]])),
        "expected_whitened": rl.masked_whiten(full["adv"], full["m"]),
    }


def sft_job(**flags):
    """One SFT step on a global batch of 16 demonstrations."""
    policy, tokenizer = tiny_policy()
    demos = rl.builtin_demonstrations(np.random.default_rng(0), 16)
    args = rl.Args(model_name="tiny", sft_batch_size=16, sft_epochs=1, **flags)
    rl.stage_sft(args, policy, tokenizer, demos, rl.NullWriter())
    return {"params": [p.detach().clone() for p in policy.parameters()]}


def rm_job():
    """One RM step on a global batch of 16 preference pairs, then the RM normalisation on
    scores that each rank holds a share of."""
    policy, tokenizer = tiny_policy()
    demos = rl.builtin_demonstrations(np.random.default_rng(0), 16)
    others = rl.sample_responses(np.random.default_rng(1), 16)
    pairs = [{"prompt": d["prompt"], "chosen": d["response"], "rejected": r}
             for d, r in zip(demos, others, strict=True)]  # fmt: skip
    args = rl.Args(model_name="tiny", rm_batch_size=16, rm_epochs=1)
    prompts = sorted(rl.PROMPTS)
    rng = np.random.default_rng(0)
    model = rl.stage_reward_model(args, policy, tokenizer, prompts, pairs, rl.NullWriter(), rng)
    scores = torch.randn(10, generator=torch.Generator().manual_seed(2))
    mine = scores[torch.as_tensor(rl.my_share(10))]
    mean, std = model.normalize_(torch.cat(rl.all_gather_list([mine])))
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "mean_std": (mean, std),
        "expected_mean_std": (scores.mean().item(), scores.std().item()),
    }


def dpo_job():
    """One DPO step on a global batch of 16 preference pairs (π_ref a frozen copy), and the
    REINFORCE++ advantages of this rank's share of a batch, whitened over all ranks."""
    policy, tokenizer = tiny_policy()
    demos = rl.builtin_demonstrations(np.random.default_rng(0), 16)
    others = rl.sample_responses(np.random.default_rng(1), 16)
    pairs = [{"prompt": d["prompt"], "chosen": d["response"], "rejected": r}
             for d, r in zip(demos, others, strict=True)]  # fmt: skip
    args = rl.Args(model_name="tiny", dpo_batch_size=16, dpo_epochs=1, dpo_lr=1e-3)
    reference = copy.deepcopy(policy).requires_grad_(False)
    rl.stage_dpo(args, policy, reference, tokenizer, pairs, rl.NullWriter())
    full = global_batch(policy, tokenizer)
    rewards = rl.kl_shaped_rewards(full["adv"][:, 0], full["logp"], full["adv"], full["m"], 0.1)
    mine = torch.as_tensor(rl.my_share(8))
    adv = rl.reinforce_pp_advantages(rewards[mine], full["m"][mine], 0.9)
    return {
        "params": [p.detach().clone() for p in policy.parameters()],
        "reinforce_pp": torch.cat(rl.all_gather_list([adv])),
        "expected_reinforce_pp": rl.masked_whiten(
            rl.token_gae(rewards, torch.zeros_like(rewards), full["m"], 0.9, 1.0)[0], full["m"]
        ),
    }


def ppo_accumulated_job():
    """ppo_job with 2 micro-batches per rank (issue 33: accumulation composes with DDP)."""
    return ppo_job(gradient_accumulation_steps=2)


def sft_accumulated_job():
    return sft_job(gradient_accumulation_steps=3)  # 8 rows per rank: micro-batches of 3, 3, 2


JOBS = {"ppo": ppo_job, "sft": sft_job, "rm": rm_job, "dpo": dpo_job,
        "ppo_k2": ppo_accumulated_job, "sft_k3": sft_accumulated_job}  # fmt: skip


def worker(rank, world_size, port, out):
    """Every job, in one gloo group (starting processes is the slow part)."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        result = {job: fn() for job, fn in JOBS.items()}
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """{job: (plain run, 2-process gloo run)}."""
    out = str(tmp_path_factory.mktemp("ddp") / "jobs.pt")
    mp.spawn(worker, args=(2, free_port(), out), nprocs=2, join=True)
    two = torch.load(out)
    return {job: (fn(), two[job]) for job, fn in JOBS.items()}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("job", ["ppo", "sft", "rm", "dpo"])
def test_two_ranks_give_the_parameters_of_one_process(job, both):
    one, two = both[job]
    for a, b in zip(one["params"], two["params"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)
    if job == "ppo":
        # whitened with global statistics = whitened over the concatenated batch
        torch.testing.assert_close(two["whitened"], two["expected_whitened"])
        torch.testing.assert_close(one["whitened"], one["expected_whitened"])
    if job == "dpo":  # REINFORCE++: Â whitened over the tokens of both ranks' responses
        torch.testing.assert_close(two["reinforce_pp"], two["expected_reinforce_pp"])
        torch.testing.assert_close(one["reinforce_pp"], one["expected_reinforce_pp"])
    if job == "rm":
        assert two["mean_std"] == pytest.approx(two["expected_mean_std"], rel=1e-6)


@pytest.mark.parametrize("job", ["ppo", "sft"])
def test_accumulation_on_two_ranks_gives_the_parameters_of_one_process(job, both):
    """K micro-batches on each of 2 ranks = one batch in one process (every normaliser global)."""
    one = both[job][0]
    two = both[{"ppo": "ppo_k2", "sft": "sft_k3"}[job]][1]
    for a, b in zip(one["params"], two["params"], strict=True):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


def test_uneven_global_batch_is_a_one_line_error():
    rl.check_flags_together(rl.Args(), 2)  # the defaults divide across 2 ranks
    with pytest.raises(ValueError, match="--rollout-batch-size 64 does not divide across 3"):
        rl.check_flags_together(rl.Args(), 3)
    with pytest.raises(ValueError, match="--minibatch-size 6 does not divide across 4"):
        rl.check_flags_together(rl.Args(minibatch_size=6), 4)
    with pytest.raises(ValueError, match="x 4 samples per prompt"):
        args = rl.Args(algo="grpo", rollout_batch_size=24, minibatch_size=8)
        rl.check_flags_together(args, 4)


def test_torchrun_uneven_global_batch_says_so_once_and_writes_nothing(tmp_path):
    """A real launch with 3 ranks of the defaults (64 prompts): one error line, from rank 0,
    before any process group or file exists (torchrun then adds its own failure report)."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "3",
           "--master-port", str(free_port()), os.path.join(ROOT, "rlhf_ppo_gpt2.py"),
           "--model-name", "tiny", "--no-cuda", "--output-dir", str(out)]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert ours == ["error: --rollout-batch-size 64 does not divide across 3 ranks; it is a "
                    "global batch size"], proc.stderr[-2000:]  # fmt: skip
    assert not out.exists()


@pytest.mark.parametrize("algo", ["ppo", "reinforce_pp", "dpo"])
def test_torchrun_only_rank_zero_writes_and_the_checkpoint_reloads(tmp_path, algo):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(free_port()), os.path.join(ROOT, "rlhf_ppo_gpt2.py"),
           "--model-name", "tiny", "--no-cuda", "--sft-demos", "256", "--sft-epochs", "1",
           "--rm-pairs", "64", "--rm-epochs", "1", "--ppo-iterations", "2",
           "--eval-samples", "32", "--sample-every", "0", "--output-dir", str(out),
           "--algo", algo, "--dpo-batch-size", "16"]  # fmt: skip
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    json_lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(json_lines) == 1  # one summary, from rank 0
    summary = json.loads(json_lines[0])
    assert summary["output_dir"] == str(out)
    files = sorted(os.listdir(out))
    assert [f for f in files if f.startswith("events")] and len(
        [f for f in files if f.startswith("events")]
    ) == 1  # one TensorBoard writer
    expected = {"sft", "policy", "summary.json"}
    expected |= set() if algo == "dpo" else {"reward_model", f"{algo}_metrics.csv"}
    assert expected <= set(files)
    policy = GPT2LMHeadModel.from_pretrained(str(out / "policy"), local_files_only=True)
    assert policy.config.n_layer == 2
