"""Tests of rlhf_ppo_gpt2.py on the tiny GPT-2: each piece of the RLHF math against a
hand-written or naive computation, the end-to-end invariants that catch the classic RLHF
bugs (ratio 1 at the first step, no off-by-one, padding invariance), and a short run that
must raise the gold score."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rlhf_ppo_gpt2 as rl  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sft(tmp_path_factory):
    """A tiny GPT-2 briefly fine-tuned on the built-in demonstrations (peaked, not uniform,
    so that an off-by-one or a wrong temperature changes the log-probs a lot)."""
    torch.manual_seed(0)
    policy, tokenizer = rl.load_gpt2(GPT2LMHeadModel, "tiny")
    demos = rl.builtin_demonstrations(np.random.default_rng(0), 1024)
    args = rl.Args(model_name="tiny", sft_epochs=1, sft_batch_size=32, sft_lr=3e-3)
    writer = rl.SummaryWriter(str(tmp_path_factory.mktemp("tb")))
    rl.stage_sft(args, policy, tokenizer, demos, writer)
    writer.close()
    return policy, tokenizer


PROMPTS = ["The movie", "Overall, the film", "The director's new film", "The cast"]


def test_sft_loss_is_cross_entropy_over_response_tokens(sft):
    policy, tokenizer = sft
    responses = [" was good.", " felt not very dull but fun.", " is long.", " seemed bad."]
    ids, mask, resp = rl.encode(tokenizer, PROMPTS, responses, 64)
    logits = policy(input_ids=ids, attention_mask=mask).logits.detach()
    loss = rl.sft_loss(logits, ids, resp).item()

    total, count = 0.0, 0
    for b in range(len(ids)):
        for t in range(1, ids.shape[1]):
            if resp[b, t]:  # token t is a response token (or the EOS): predicted at t - 1
                z = logits[b, t - 1].double()
                total -= (z[ids[b, t]] - torch.logsumexp(z, 0)).item()
                count += 1
    assert count == sum(len(tokenizer(r).input_ids) + 1 for r in responses)
    assert loss == pytest.approx(total / count, rel=1e-5)

    # The labels of prompt and pad positions do not matter (not even invalid ones).
    scrambled = torch.where(resp.bool(), ids, torch.randint_like(ids, len(tokenizer)))
    assert rl.sft_loss(logits, scrambled, resp).item() == pytest.approx(loss, rel=1e-6)
    assert rl.sft_loss(logits, ids.masked_fill(resp == 0, -100), resp).item() == pytest.approx(
        loss, rel=1e-6
    )


def test_logprobs_line_up_with_sampled_tokens_and_generate_scores(sft):
    policy, tokenizer = sft
    torch.manual_seed(1)
    prompts = PROMPTS * 4  # prompts of 2 to 5 tokens: real left padding
    for temperature in (1.0, 0.7):
        q, qm, r, m, gen_logp = rl.generate_responses(
            policy, tokenizer, prompts, 12, temperature, scores=True
        )
        assert (qm == 0).any() and (m == 0).any()  # left-padded prompts; padding after EOS
        with torch.no_grad():
            logits = rl.sequence_logits(policy, q, qm, r, m)
        logp = rl.token_logprobs(logits, r, temperature) * m
        torch.testing.assert_close(logp, gen_logp, atol=1e-4, rtol=0)
        # The same check one position off fails by a wide margin: the test can see it.
        shifted = rl.token_logprobs(logits[:, 1:], r[:, :-1], temperature) * m[:, :-1]
        assert (shifted - gen_logp[:, :-1]).abs().max() > 0.5
        # Scoring at T = 1 what was sampled at T = 0.7 is also visible.
        if temperature != 1.0:
            assert ((rl.token_logprobs(logits, r, 1.0) * m - gen_logp).abs().max()) > 0.1


def test_same_prompt_padded_differently_gives_identical_logprobs(sft):
    policy, tokenizer = sft
    pad = tokenizer.pad_token_id
    query = torch.tensor(tokenizer("The director's new film").input_ids)
    response = torch.tensor([tokenizer(" was not very good.").input_ids + [pad]])
    response_mask = torch.ones_like(response)
    outs = []
    for n_pad in (0, 3, 9):
        q = torch.cat([torch.full((n_pad,), pad), query])[None]
        qm = (torch.arange(q.shape[1]) >= n_pad).long()[None]
        with torch.no_grad():
            logits = rl.sequence_logits(policy, q, qm, response, response_mask)
        outs.append(rl.token_logprobs(logits, response, 1.0))
    torch.testing.assert_close(outs[1], outs[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(outs[2], outs[0], atol=1e-5, rtol=0)
    # Without position ids from the mask the padding would shift the positions.
    q = torch.cat([torch.full((9,), pad), query])[None]
    qm = (torch.arange(q.shape[1]) >= 9).long()[None]
    with torch.no_grad():
        logits = policy(
            input_ids=torch.cat([q, response], 1),
            attention_mask=torch.cat([qm, response_mask], 1),
        ).logits[:, q.shape[1] - 1 : -1]
    assert (rl.token_logprobs(logits, response, 1.0) - outs[0]).abs().max() > 1e-3


def rollout_batch(sft, args):
    """A rollout of the SFT policy with an (untrained) RM and value model, ready for PPO."""
    policy, tokenizer = sft
    policy = copy.deepcopy(policy)
    reward_model = rl.RewardModel(copy.deepcopy(policy.transformer)).eval()
    reference = copy.deepcopy(policy).requires_grad_(False)
    value_model = rl.ValueModel(reward_model)
    models = (policy, reference, reward_model, tokenizer, tokenizer)
    roll, _ = rl.collect_rollout(*models, PROMPTS * 4, args)
    q, qm, r, m = roll["q"], roll["qm"], roll["r"], roll["m"]
    with torch.no_grad():
        values = value_model(q, qm, r, m) * m
        rewards = rl.kl_shaped_rewards(roll["scores"], roll["logp"], roll["ref_logp"], m, 0.1)
        adv, returns = rl.token_gae(rewards, values, m, 1.0, 0.95)
    roll |= {"values": values, "adv": rl.masked_whiten(adv, m), "returns": returns}
    optimizer = torch.optim.Adam([*policy.parameters(), *value_model.parameters()], lr=1e-3)
    return policy, value_model, optimizer, roll


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_first_minibatch_ratio_is_one(sft, temperature):
    torch.manual_seed(2)
    args = rl.Args(model_name="tiny", temperature=temperature, max_new_tokens=12)
    args.minibatch_size, args.ppo_epochs = 8, 2
    policy, value_model, optimizer, roll = rollout_batch(sft, args)
    stats = rl.ppo_update(args, policy, value_model, optimizer, roll)
    assert stats["ratio_dev_first_mb"] < 1e-4
    assert stats["approx_kl"] > 0  # the updates did move the policy afterwards
    # A temperature mismatch between rollout and update breaks it, visibly.
    policy, value_model, optimizer, roll = rollout_batch(sft, args)
    wrong = dataclasses.replace(args, temperature=temperature * 1.5)
    assert rl.ppo_update(wrong, policy, value_model, optimizer, roll)["ratio_dev_first_mb"] > 0.05


def test_kl_shaped_rewards():
    torch.manual_seed(3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    logp, ref_logp = torch.randn(3, 5) * mask, torch.randn(3, 5) * mask
    scores, beta = torch.tensor([0.5, -1.0, 2.0]), 0.3
    rewards = rl.kl_shaped_rewards(scores, logp, ref_logp, mask, beta)
    for b in range(3):
        last = int(mask[b].sum()) - 1
        for t in range(5):
            expected = 0.0
            if t <= last:
                expected = -beta * (logp[b, t] - ref_logp[b, t]).item()
            if t == last:
                expected += scores[b].item()
            assert rewards[b, t].item() == pytest.approx(expected, abs=1e-6)


def test_token_gae_matches_naive_sum():
    torch.manual_seed(4)
    lengths = [5, 2, 7, 1]
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    rewards, values = torch.randn(4, 7), torch.randn(4, 7)  # junk on padding in both
    gamma, lam = 1.0, 0.95
    adv, returns = rl.token_gae(rewards, values, mask, gamma, lam)
    for b, n in enumerate(lengths):
        v = values[b, :n].tolist() + [0.0]  # the episode ends at the last real token
        deltas = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(7):
            if t < n:
                # A_t = sum_k (gamma lam)^k delta_{t+k}
                a = sum((gamma * lam) ** k * deltas[t + k] for k in range(n - t))
                assert adv[b, t].item() == pytest.approx(a, abs=1e-5)
                assert returns[b, t].item() == pytest.approx(a + v[t], abs=1e-5)
            else:
                assert adv[b, t] == 0 and returns[b, t] == 0
    # With lam = 1 and gamma = 1 the return is the plain sum of the rewards to go.
    _, returns = rl.token_gae(rewards, values, mask, 1.0, 1.0)
    real = rewards * mask
    torch.testing.assert_close(returns, real.flip(1).cumsum(1).flip(1) * mask)


def test_adaptive_kl_controller_rule():
    for kl, e in [(3.0, 0.0), (3.3, 0.1), (9.0, 0.2), (2.4, -0.2), (0.0, -0.2), (2.7, -0.1)]:
        beta = rl.adaptive_kl_coef(0.1, kl, 3.0, 64, 1000)
        assert beta == pytest.approx(0.1 * (1 + e * 64 / 1000))
    assert rl.adaptive_kl_coef(0.1, 50.0, 0.0, 64, 1000) == 0.1  # kl_target 0: fixed beta
    beta = 0.1
    for _ in range(10):  # KL persistently twice the target: beta grows 1.28% a step
        beta = rl.adaptive_kl_coef(beta, 6.0, 3.0, 64, 1000)
    assert beta == pytest.approx(0.1 * 1.0128**10)


def test_ppo_losses_match_their_definitions():
    torch.manual_seed(5)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]).float()
    old, new, adv = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    loss, clipfrac, approx_kl = rl.token_policy_loss(new, old, adv, mask, 0.2)
    terms, clipped, kls = [], [], []
    for b, t in mask.nonzero().tolist():
        rho = math.exp(new[b, t] - old[b, t])
        terms.append(-min(rho * adv[b, t], min(max(rho, 0.8), 1.2) * adv[b, t]))
        clipped.append(abs(rho - 1) > 0.2)
        kls.append(rho - 1 - math.log(rho))
    assert loss.item() == pytest.approx(np.mean(terms), abs=1e-5)
    assert clipfrac.item() == pytest.approx(np.mean(clipped))
    assert approx_kl.item() == pytest.approx(np.mean(kls), abs=1e-5)

    v, v_old, ret = torch.randn(2, 4), torch.randn(2, 4), torch.randn(2, 4)
    loss = rl.token_value_loss(v, v_old, ret, mask, 0.2)
    terms = []
    for b, t in mask.nonzero().tolist():
        vc = v_old[b, t] + min(max(v[b, t] - v_old[b, t], -0.2), 0.2)
        terms.append(0.5 * max((v[b, t] - ret[b, t]) ** 2, (vc - ret[b, t]) ** 2))
    assert loss.item() == pytest.approx(np.mean(terms), abs=1e-5)


def test_masked_whiten_ignores_padding():
    x = torch.tensor([[1.0, 2.0, 3.0, 99.0], [4.0, 5.0, -99.0, -99.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).float()
    w = rl.masked_whiten(x, mask)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    torch.testing.assert_close(w[mask.bool()], (real - real.mean()) / real.std())
    assert (w[~mask.bool()] == 0).all()


def test_response_mask_after_eos():
    eos = 7
    responses = torch.tensor([[3, 4, eos, eos, eos], [eos, eos, 1, 2, 3], [1, 2, 3, 4, 5]])
    expected = torch.tensor([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]])
    assert torch.equal(rl.response_mask_after_eos(responses, eos), expected)


def test_save_pretrained_atomic_keeps_old_copy_on_failure(sft, tmp_path):
    policy, tokenizer = sft
    path = str(tmp_path / "policy")
    rl.save_pretrained_atomic(path, policy, tokenizer)
    before = sorted(os.listdir(path))

    class Broken:
        def save_pretrained(self, directory):
            os.makedirs(directory)
            open(os.path.join(directory, "half-written"), "w").close()
            raise OSError("disk full")

    with pytest.raises(OSError):
        rl.save_pretrained_atomic(path, Broken(), tokenizer)
    assert sorted(os.listdir(path)) == before


def test_bad_data_file_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "sft.jsonl"
    bad.write_text(json.dumps({"prompt": "The movie", "response": " was good."}) + "\n{oops\n")
    with pytest.raises(SystemExit) as e:
        rl.main(["--model-name", "tiny", "--sft-data", str(bad), "--output-dir", str(tmp_path)])
    assert str(e.value).startswith("error: ") and f"{bad}:2" in str(e.value)
    with pytest.raises(SystemExit) as e:
        rl.main(["--model-name", "tiny", "--minibatch-size", "128", "--output-dir", str(tmp_path)])
    assert "--minibatch-size" in str(e.value)


def test_progress_lines_output_dir_first_and_a_short_rounded_summary(tmp_path, capsys):
    """The output folder in the first line; per stage about ten progress lines (percent, step,
    elapsed time, ETA), the last at 100%; a short JSON line of rounded floats, whose values
    summary.json holds unrounded, beside everything else."""
    out = tmp_path / "run"
    rl.main(["--model-name", "tiny", "--no-cuda", "--sft-demos", "160", "--sft-epochs", "1",
             "--sft-batch-size", "8", "--rm-pairs", "16", "--rm-epochs", "1", "--rm-batch-size",
             "8", "--ppo-iterations", "20", "--rollout-batch-size", "4", "--minibatch-size", "4",
             "--ppo-epochs", "1", "--eval-samples", "4", "--max-new-tokens", "4",
             "--sample-every", "0", "--output-dir", str(out)])  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    assert str(out) in lines[0]
    for stage, steps in [("sft step", 20), ("rm step", 2), ("ppo iteration", 20)]:
        shown = [line for line in lines if line.startswith("[") and f"] {stage} " in line]
        assert len(shown) == min(10, steps) and shown[-1].startswith(f"[100%] {stage} {steps} ")
        assert all("elapsed" in line and "ETA" in line for line in shown)
    summary = json.loads(lines[-1])
    assert len(lines[-1]) < 400 and summary["output_dir"] == str(out)
    assert all(round(v, 3) == v for v in summary.values() if isinstance(v, float))
    details = json.loads((out / "summary.json").read_text())
    assert {k: round(v, 3) if isinstance(v, float) else v for k, v in details.items()
            if k in summary} == summary  # fmt: skip
    assert {"sft_rm_score", "final_beta", "iteration_s", "ppo_time_s"} <= details.keys()


def test_help_shows_the_usage_examples(capsys):
    with pytest.raises(SystemExit):
        rl.main(["--help"])
    out = capsys.readouterr().out
    assert "torchrun --nproc-per-node 2 rlhf_ppo_gpt2.py" in out and "HF_HUB_OFFLINE=1" in out
    assert "(default: )" not in out


def test_short_run_raises_gold_score(tmp_path):
    """All three stages, shortened: the gold (VADER) score of the policy's samples, which
    neither the RM nor PPO sees, rises well above that of the SFT policy.

    Measured over seeds 1..10 (2026-11-22): with rm_pairs=1024, rm_epochs=2 the worst gain
    was +0.035 (seed 3: its RM stayed near chance), too thin for other machines; with
    rm_pairs=4096, rm_epochs=1 (below) the gains were +0.30 .. +0.54, worst +0.298 (seed 3),
    and SFT well-formed 0.844 .. 0.961. The bounds keep about half of the worst value."""
    args = rl.Args(
        model_name="tiny", seed=1, output_dir=str(tmp_path), sample_every=0,
        sft_demos=2048, sft_epochs=2, rm_pairs=4096, rm_epochs=1,
        ppo_iterations=15, eval_samples=128,
    )  # fmt: skip
    summary = rl.train(args)
    assert summary["sft_well_formed"] > 0.7
    assert summary["final_gold"] > summary["sft_gold"] + 0.15
    for sub in ("sft", "reward_model", "policy"):
        assert os.path.isdir(tmp_path / sub)


# ---- the critic-free algorithms (RLOO, GRPO, Dr. GRPO) and the KL estimators ----

ALGOS = ["ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp"]  # the on-policy ones; DPO below
TOKEN_MEAN = ("ppo", "rloo", "reinforce_pp")  # token_policy_loss; GRPO's loss otherwise


def test_group_advantages_match_naive_loops():
    torch.manual_seed(6)
    for k in (2, 4, 5):
        rewards = torch.randn(4 * k)
        rewards[k : 2 * k] = 0.7  # equal rewards: GRPO's std is 0
        rewards[2 * k] = rewards[2 * k + 1] = -0.3  # partly tied
        rloo = rl.rloo_advantages(rewards, k)
        grpo = rl.group_advantages(rewards, k, scale_by_std=True)
        dr_grpo = rl.group_advantages(rewards, k, scale_by_std=False)
        for g in range(4):
            group = rewards[g * k : (g + 1) * k].tolist()
            mean = sum(group) / k
            std = math.sqrt(sum((x - mean) ** 2 for x in group) / (k - 1))
            for i in range(k):
                others = [group[j] for j in range(k) if j != i]
                assert rloo[g * k + i].item() == pytest.approx(
                    group[i] - sum(others) / (k - 1), abs=1e-6
                )
                want = 0.0 if std == 0 else (group[i] - mean) / (std + 1e-4)
                assert grpo[g * k + i].item() == pytest.approx(want, abs=1e-5)
                assert dr_grpo[g * k + i].item() == pytest.approx(group[i] - mean, abs=1e-6)
        # the group of equal rewards: exactly 0, not NaN, in all three
        for adv in (rloo, grpo, dr_grpo):
            assert torch.isfinite(adv).all() and (adv[k : 2 * k] == 0).all()


def naive_logprob_sum(policy, tokenizer, prompt, response_ids, temperature):
    """Σ_t log π(a_t|s_t) of one response, from a forward pass over the unpadded sequence."""
    p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
    ids = torch.tensor([p_ids + response_ids])
    logits = policy(input_ids=ids).logits[0, len(p_ids) - 1 : -1] / temperature
    return (
        torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response_ids)[:, None]).sum()
    )


@pytest.mark.parametrize("algo", ALGOS)
def test_ratio_one_gradient_is_the_reinforce_gradient(sft, algo):
    """At ratio 1 (the first minibatch) the gradient of each algorithm's clipped loss is the
    REINFORCE gradient -Σ_i w_i Â_i Σ_t ∇log π(a_t|s_t), with the weights w_i of its own
    aggregation; the reference sums log-probs of each response from its own unpadded forward
    pass. With β > 0, GRPO's k3 term adds β w_i Σ_t (1 − π_ref/π) ∇log π."""
    policy, tokenizer = sft
    policy = copy.deepcopy(policy).requires_grad_(True)
    torch.manual_seed(8)
    k, temperature = 4, 0.9
    prompts = [p for p in PROMPTS for _ in range(k)]
    q, qm, r, m, _ = rl.generate_responses(policy, tokenizer, prompts, 10, temperature)
    adv_seq = torch.randn(len(prompts))
    adv = adv_seq[:, None] * m
    B, L = r.shape
    ref = rl.token_logprobs(rl.sequence_logits(policy, q, qm, r, m), r, 1.0).detach() * m
    beta = 0.0 if algo in TOKEN_MEAN else 0.3
    logp = rl.token_logprobs(rl.sequence_logits(policy, q, qm, r, m), r, temperature)
    if algo in TOKEN_MEAN:
        loss = rl.token_policy_loss(logp, logp.detach(), adv, m, 0.2)[0]
    else:
        constant = B * L if algo == "dr_grpo" else 0
        loss = rl.grpo_policy_loss(logp, logp.detach(), ref, adv, m, 0.2, beta, constant)[0]
    params = list(policy.parameters())
    grads = torch.autograd.grad(loss, params)

    lengths = m.sum(1).tolist()
    reference = 0.0
    for i in range(B):
        ids = r[i, : lengths[i]].tolist()
        w = {"grpo": 1 / (B * lengths[i]), "dr_grpo": 1 / (B * L)}.get(algo, 1 / m.sum().item())
        logp_sum = naive_logprob_sum(policy, tokenizer, prompts[i], ids, temperature)
        reference = reference - w * adv_seq[i] * logp_sum
        if beta:
            p_ids = tokenizer(prompts[i], add_special_tokens=False).input_ids
            z = policy(input_ids=torch.tensor([p_ids + ids])).logits[0, len(p_ids) - 1 : -1]
            lp = torch.log_softmax(z / temperature, -1).gather(-1, torch.tensor(ids)[:, None])
            log_r = ref[i, : lengths[i], None] - lp
            reference = reference + w * beta * (log_r.exp() - 1 - log_r).sum()
    expected = torch.autograd.grad(reference, params)
    for g, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-6, rtol=1e-4)


def test_kl_estimators_by_enumeration():
    """E_π[k1] = E_π[k3] = KL(π‖π_ref) exactly, E_π[k2] ≠ KL; as loss terms at fixed samples
    their expected gradients are 0 (k1), ∇KL(π‖π_ref) (k2) and ∇KL(π_ref‖π) (k3: the bias)."""
    torch.manual_seed(9)
    for n in (2, 3, 7):
        theta = torch.randn(n, dtype=torch.float64, requires_grad=True)
        ref = torch.log_softmax(torch.randn(n, dtype=torch.float64), 0)
        logp = torch.log_softmax(theta, 0)
        p = logp.exp()
        kl = (p * (logp - ref)).sum()  # KL(π‖π_ref) by enumeration
        reverse = (ref.exp() * (ref - logp)).sum()  # KL(π_ref‖π)
        k1, k2, k3 = rl.kl_estimators(logp, ref)  # the value for each possible sample a
        assert (p * k1).sum().item() == pytest.approx(kl.item(), rel=1e-12)
        assert (p * k3).sum().item() == pytest.approx(kl.item(), rel=1e-12)
        assert abs((p * k2).sum().item() - kl.item()) > 1e-3  # k2 is biased
        assert (k3 >= 0).all()

        def grad(x, theta=theta):
            return torch.autograd.grad(x, theta, retain_graph=True)[0]

        grad_kl = grad(kl)
        # ∇ of the expectations (through π as well): k1 and k3 give ∇KL
        torch.testing.assert_close(grad((p * k1).sum()), grad_kl)
        torch.testing.assert_close(grad((p * k3).sum()), grad_kl)
        # as loss terms: the samples are fixed, only the estimator is differentiated
        w = p.detach()
        torch.testing.assert_close(grad((w * k1).sum()), torch.zeros(n, dtype=torch.float64))
        torch.testing.assert_close(grad((w * k2).sum()), grad_kl)
        torch.testing.assert_close(grad((w * k3).sum()), grad(reverse))
        assert (grad((w * k3).sum()) - grad_kl).abs().max() > 1e-3  # GRPO's k3 bias


@pytest.mark.parametrize("algo", ALGOS)
def test_losses_ignore_padding_width(algo):
    """Extra padding columns (garbage log-probs, mask 0) change neither the loss nor the
    gradient on real tokens, for each algorithm's aggregation."""
    torch.manual_seed(10)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5, 2, 2])
    B, L, extra = len(lengths), 5, 3

    full_old = -torch.rand(B, L + extra) * 3
    full_logp = full_old + 0.3 * torch.randn(B, L + extra)
    full_logp[:, L:] = 50.0  # garbage in the extra padding columns
    full_ref = -torch.rand(B, L + extra) * 3
    seq_adv = rl.group_advantages(torch.randn(B), 4, True)

    def loss_and_grad(width):
        mask = (torch.arange(width)[None] < lengths[:, None]).float()
        old, ref = full_old[:, :width], full_ref[:, :width]
        logp = full_logp[:, :width].clone().requires_grad_(True)
        adv = seq_adv[:, None] * mask
        if algo in TOKEN_MEAN:
            loss = rl.token_policy_loss(logp, old, adv, mask, 0.2)[0]
        else:
            constant = B * 16 if algo == "dr_grpo" else 0
            loss = rl.grpo_policy_loss(logp, old, ref, adv, mask, 0.2, 0.1, constant)[0]
        return loss, torch.autograd.grad(loss, logp)[0]

    loss, grad = loss_and_grad(L)
    loss_padded, grad_padded = loss_and_grad(L + extra)
    assert loss_padded.item() == pytest.approx(loss.item(), abs=1e-6)
    torch.testing.assert_close(grad_padded[:, :L], grad)
    assert (grad_padded[:, L:] == 0).all()


@pytest.mark.parametrize("algo", ALGOS)
def test_first_minibatch_ratio_is_one_for_every_algo(sft, algo):
    policy, tokenizer = sft
    policy = copy.deepcopy(policy)
    torch.manual_seed(12)
    args = rl.Args(model_name="tiny", algo=algo, reward="gold", max_new_tokens=12)
    args.minibatch_size, args.ppo_epochs, k = 8, 2, 4
    reference = copy.deepcopy(policy).requires_grad_(False)
    models = (policy, reference, None, tokenizer, tokenizer)
    roll, _ = rl.collect_rollout(*models, [p for p in PROMPTS for _ in range(k)], args)
    m = roll["m"]
    value_model = None
    if algo == "ppo":
        value_model = rl.ValueModel(rl.RewardModel(policy.transformer))
        with torch.no_grad():
            values = value_model(roll["q"], roll["qm"], roll["r"], m) * m
        rewards = rl.kl_shaped_rewards(roll["scores"], roll["logp"], roll["ref_logp"], m, 0.1)
        adv, returns = rl.token_gae(rewards, values, m, 1.0, 0.95)
        roll |= {"values": values, "returns": returns, "adv": rl.masked_whiten(adv, m)}
    elif algo == "rloo":
        roll["adv"] = rl.rloo_advantages(roll["scores"], k)[:, None] * m
    elif algo == "reinforce_pp":
        rewards = rl.kl_shaped_rewards(roll["scores"], roll["logp"], roll["ref_logp"], m, 0.1)
        roll["adv"] = rl.reinforce_pp_advantages(rewards, m, 1.0)
    else:
        roll["adv"] = rl.group_advantages(roll["scores"], k, algo == "grpo")[:, None] * m
    trained = [*policy.parameters(), *(value_model.parameters() if value_model else [])]
    optimizer = torch.optim.Adam(trained, lr=1e-3)
    stats = rl.ppo_update(args, policy, value_model, optimizer, roll, beta=0.1)
    assert stats["ratio_dev_first_mb"] < 1e-5
    assert stats["approx_kl"] > 0  # and the policy did move afterwards
    assert ("value_loss" in stats) == (algo == "ppo")


def test_group_sampling_and_bad_flags(tmp_path):
    for argv, fragment in [
        (["--algo", "a2c"], "--algo"),
        (["--reward", "vader"], "--reward"),
        (["--algo", "grpo", "--samples-per-prompt", "1"], "--samples-per-prompt >= 2"),
        (["--algo", "rloo", "--samples-per-prompt", "3"], "multiple of"),
        (
            ["--algo", "reinforce_pp", "--rollout-batch-size", "1", "--minibatch-size", "1"],
            "--rollout-batch-size >= 2",
        ),
        (["--dpo-beta", "0"], "--dpo-beta"),
    ]:
        with pytest.raises(SystemExit) as e:
            rl.main(["--model-name", "tiny", "--output-dir", str(tmp_path), *argv])
        assert str(e.value).startswith("error: ") and fragment in str(e.value)


# ---- issue 34: REINFORCE++ and DPO ----


def naive_reinforce_pp(rewards, mask, gamma):
    """G_{i,t} = Σ_{s≥t} γ^{s−t} r_{i,s} by a loop, then (G − mean) / sqrt(var + 1e-8) over
    every real token, var unbiased, in float64."""
    B, L = rewards.shape
    G = [[sum(gamma ** (s - t) * rewards[i, s].item() for s in range(t, L) if mask[i, s])
          for t in range(L)] for i in range(B)]  # fmt: skip
    real = [G[i][t] for i in range(B) for t in range(L) if mask[i, t]]
    mean = sum(real) / len(real)
    var = sum((g - mean) ** 2 for g in real) / (len(real) - 1)
    return torch.tensor([[(G[i][t] - mean) / math.sqrt(var + 1e-8) * mask[i, t].item()
                          for t in range(L)] for i in range(B)])  # fmt: skip


def test_reinforce_pp_advantages_and_how_they_differ_from_rloo_and_grpo():
    torch.manual_seed(20)
    lengths = torch.tensor([5, 2, 4, 1, 3, 5, 2, 4])
    B, L, k = len(lengths), 6, 4
    m = (torch.arange(L)[None] < lengths[:, None]).float()
    logp, ref = -torch.rand(B, L) * m, -torch.rand(B, L) * m
    scores = torch.randn(B)
    for beta, gamma in [(0.1, 1.0), (0.3, 0.9)]:
        rewards = rl.kl_shaped_rewards(scores, logp, ref, m, beta)
        adv = rl.reinforce_pp_advantages(rewards, m, gamma)
        torch.testing.assert_close(adv, naive_reinforce_pp(rewards, m, gamma), atol=1e-5, rtol=0)
        assert (adv[m == 0] == 0).all()

    # With β = 0 and γ = 1 every token of response i carries its score R_i: REINFORCE++ gives
    # Â_i = (R_i − μ) / σ with μ, σ over all tokens of the batch (a response weighs by its
    # length); RLOO gives k/(k−1) (R_i − mean of its group); GRPO (R_i − mean) / std per group.
    def closed_form(R):
        w, R = lengths.double(), R.double()
        mu = (w * R).sum() / w.sum()
        return (R - mu) / ((w * (R - mu) ** 2).sum() / (w.sum() - 1)).sqrt()

    def reinforce_pp(R):
        return rl.reinforce_pp_advantages(rl.kl_shaped_rewards(R, logp, ref, m, 0.0), m, 1.0)

    adv = reinforce_pp(scores)
    torch.testing.assert_close(adv[:, 0].double(), closed_form(scores), atol=1e-5, rtol=0)
    groups = scores.view(-1, k)
    rloo = (k / (k - 1) * (groups - groups.mean(1, keepdim=True))).flatten()
    torch.testing.assert_close(rl.rloo_advantages(scores, k), rloo, atol=1e-6, rtol=0)
    # Shifting one prompt's rewards by c moves the REINFORCE++ Â of the other prompts too (the
    # baseline is the batch's mean) and leaves RLOO's and GRPO's unchanged (the group's).
    shifted = scores.clone()
    shifted[:k] += 2.0
    adv_shifted = reinforce_pp(shifted)
    torch.testing.assert_close(adv_shifted[:, 0].double(), closed_form(shifted), atol=1e-5, rtol=0)
    assert (adv_shifted[k:, 0] - adv[k:, 0]).abs().max() > 0.5
    same = dict(atol=1e-5, rtol=0)
    torch.testing.assert_close(
        rl.rloo_advantages(shifted, k), rl.rloo_advantages(scores, k), **same
    )
    for std in (True, False):
        torch.testing.assert_close(rl.group_advantages(shifted, k, std),
                                   rl.group_advantages(scores, k, std), **same)  # fmt: skip


def test_dpo_loss_matches_a_naive_float64_loop_with_its_gradient():
    torch.manual_seed(21)
    n, beta = 6, 0.7
    logps = [-torch.rand(n, dtype=torch.float64) * 20 for _ in range(4)]
    inputs = [x.clone().requires_grad_(True) for x in logps[:2]]
    loss, margin = rl.dpo_loss(*inputs, *logps[2:], beta)
    grads = torch.autograd.grad(loss, inputs)
    want, want_margin = 0.0, 0.0
    want_grads = [[0.0] * n, [0.0] * n]
    for i in range(n):
        pc, pr, rc, rr = (x[i].item() for x in logps)
        z = beta * ((pc - rc) - (pr - rr))
        want += math.log1p(math.exp(-z)) / n  # −log σ(z)
        want_margin += z / n
        d = -beta * (1 - 1 / (1 + math.exp(-z))) / n  # ∂(−log σ(z))/∂z · ∂z/∂log π(y_w)
        want_grads[0][i], want_grads[1][i] = d, -d
    assert loss.item() == pytest.approx(want, rel=1e-12)
    assert margin.item() == pytest.approx(want_margin, rel=1e-12)
    for g, w in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(g, torch.tensor(w, dtype=torch.float64))


def test_dpo_pair_logprobs_and_loss_at_initialisation(sft):
    """pair_logprobs sums the response tokens and EOS of each sequence, padding masked (each
    pair against an unpadded forward pass); at π = π_ref the loss is log 2, the margin 0."""
    policy, tokenizer = sft
    responses = [" was good.", " felt not very dull but it was fun.", " is long.", " seemed bad."]
    rows = [{"prompt": p, "chosen": c, "rejected": r}
            for p, c, r in zip(PROMPTS, responses, responses[::-1], strict=True)]  # fmt: skip
    chosen, rejected = rl.pair_logprobs(policy, tokenizer, rows, 64, "cpu")
    for i, row in enumerate(rows):
        for key, got in (("chosen", chosen), ("rejected", rejected)):
            ids = tokenizer(row[key], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
            want = naive_logprob_sum(policy, tokenizer, row["prompt"], ids, 1.0)
            assert got[i].item() == pytest.approx(want.item(), abs=1e-4)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        ref = rl.pair_logprobs(reference, tokenizer, rows, 64, "cpu")
    loss, margin = rl.dpo_loss(chosen, rejected, *ref, 0.5)
    assert margin.item() == 0.0
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert torch.autograd.grad(loss, next(policy.parameters())) is not None


# ---- issue 14: use what was trained (offline) ----

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The output directory of a very short tiny run (SFT, then one RLOO iteration)."""
    out = tmp_path_factory.mktemp("run")
    args = rl.Args(
        model_name="tiny", seed=3, output_dir=str(out), sample_every=0, sft_demos=512,
        sft_epochs=1, reward="gold", algo="rloo", ppo_iterations=1, eval_samples=16,
    )  # fmt: skip
    rl.train(args)
    return out


def test_readme_lines_load_the_saved_policy_and_sample(tiny_run, capsys):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    block = readme.split("<!-- rlhf-policy-snippet -->")[1].split("```python\n")[1]
    snippet = block.split("```")[0]
    assert 'from_pretrained("runs/my_run/policy")' in snippet
    exec(snippet.replace("runs/my_run", str(tiny_run)), {})
    text = capsys.readouterr().out
    assert text.startswith("The movie") and len(text.strip()) > len("The movie")


def test_model_name_saved_directory_starts_a_new_run(tiny_run, tmp_path):
    """--model-name <a saved directory> loads it (local files only: no network) in
    rlhf_ppo_gpt2.py and in reward_model.py."""
    from safetensors.torch import load_file

    sft_dir = str(tiny_run / "sft")
    args = rl.Args(
        model_name=sft_dir, seed=4, output_dir=str(tmp_path / "rl"), sample_every=0,
        sft_demos=64, sft_epochs=0, reward="gold", algo="grpo", ppo_iterations=1,
        eval_samples=16, threads=1,
    )  # fmt: skip
    summary = rl.train(args)
    assert summary["model_name"] == sft_dir
    # No SFT steps: the new run's SFT model is the loaded one, weight for weight.
    before = load_file(os.path.join(sft_dir, "model.safetensors"))
    after = load_file(str(tmp_path / "rl" / "sft" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)

    import reward_model as rm

    rm_args = rm.Args(model_name=sft_dir, seed=4, output_dir=str(tmp_path / "rm"),
                      num_pairs=64, epochs=1)  # fmt: skip
    rm.train(rm_args)
    loaded, _ = rm.RewardModel.load(str(tmp_path / "rm" / "reward_model"))
    assert loaded.backbone.config.n_embd == 64  # the tiny trunk it started from


def test_offline_hub_fails_fast_naming_tiny(tmp_path, monkeypatch):
    """--model-name gpt2 without a local copy under HF_HUB_OFFLINE=1 (what the docstring tells
    a user without a network to set): a one-line error within seconds, naming the flag and
    --model-name tiny. No network is touched."""
    import time

    from huggingface_hub import constants

    if os.path.isdir(os.path.join(constants.HF_HUB_CACHE, "models--gpt2")):
        pytest.skip("gpt2 is in the local Hugging Face cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    start = time.time()
    with pytest.raises(SystemExit) as e:
        rl.main(["--model-name", "gpt2", "--output-dir", str(tmp_path), "--sft-demos", "64"])
    assert time.time() - start < 10
    message = str(e.value)
    assert message.startswith("error: ") and "\n" not in message
    assert "--model-name gpt2" in message and "tiny" in message


@pytest.fixture(scope="module")
def learning_sft(tmp_path_factory):
    """A tiny SFT model trained once (2,048 demonstrations, 2 epochs) and saved, from which
    each algorithm's short learning run starts (--model-name <dir> --sft-epochs 0)."""
    out = tmp_path_factory.mktemp("learning_sft")
    rl.train(short_gold_args(model_name="tiny", sft_demos=2048, sft_epochs=2, ppo_iterations=0,
                             eval_samples=16, output_dir=str(out), seed=5))  # fmt: skip
    return str(out / "sft")


def short_gold_args(**overrides):
    """Stage 3 against the gold reward, 12 iterations of 64 responses, on one thread."""
    args = dict(model_name="", sft_demos=64, sft_epochs=0, reward="gold", ppo_iterations=12,
                eval_samples=128, sample_every=0, threads=1)  # fmt: skip
    return rl.Args(**(args | overrides))


# Gold gain (final - SFT) of short_gold_args runs from learning_sft, stage-3 seeds 1..10,
# measured on this machine (min .. max over the 10 seeds): ppo +0.080 .. +0.334, rloo
# +0.140 .. +0.283, grpo +0.067 .. +0.261, dr_grpo +0.048 .. +0.254; final well-formed
# fraction >= 0.805 in all 40 runs. Each bound is half the worst seed's gain or less (the
# SFT and final scores are means of 128 samples each, about ±0.04 of noise apiece).
# Issue 34, same seeds: reinforce_pp +0.151 .. +0.332, well-formed >= 0.844; dpo (1,024 pairs
# labelled by the annotators, 2 epochs; no reward, gold or RM) +0.106 .. +0.348, >= 0.742.
# Issue 31's defaults, same seeds: rloo with β fixed +0.132 .. +0.339, well-formed >= 0.867;
# grpo with DAPO's token mean +0.037 .. +0.308 (seed 10; the others >= +0.084), >= 0.844.
LEARNING_BOUND = {"ppo": 0.04, "rloo": 0.06, "grpo": 0.015, "dr_grpo": 0.02,
                  "reinforce_pp": 0.07, "dpo": 0.05}  # fmt: skip


@pytest.mark.parametrize("algo", [*ALGOS, "dpo"])
def test_short_run_of_each_algo_raises_gold_score(learning_sft, tmp_path, algo):
    extra = dict(rm_pairs=1024) if algo == "dpo" else {}
    summary = rl.train(short_gold_args(model_name=learning_sft, algo=algo, seed=1,
                                       output_dir=str(tmp_path), **extra))  # fmt: skip
    assert summary["final_gold"] > summary["sft_gold"] + LEARNING_BOUND[algo]
    assert summary["final_well_formed"] > 0.6


# --bf16 (CPU autocast), ppo, same SFT model, stage-3 seeds 1..6, measured here: +0.077 ..
# +0.240 (fp32: +0.080 .. +0.334 over seeds 1..10), well-formed >= 0.906: fp32's bound holds.
def test_short_ppo_run_learns_under_bf16(learning_sft, tmp_path):
    args = short_gold_args(model_name=learning_sft, seed=1, output_dir=str(tmp_path), bf16=True)
    summary = rl.train(args)
    assert summary["final_gold"] > summary["sft_gold"] + LEARNING_BOUND["ppo"]
    assert summary["final_well_formed"] > 0.6


# ---- issue 33: gradient accumulation, activation checkpointing, bf16 ----


def padded_rollout(policy, tokenizer, B=8):
    """B left-padded prompts and responses of different lengths (1 to 6 tokens), with
    rollout-time log-probs and made-up values, returns, advantages and reference log-probs."""
    g = torch.Generator().manual_seed(1)
    P, T, pad = 4, 6, tokenizer.pad_token_id
    q = torch.randint(1, len(tokenizer), (B, P), generator=g)
    qm = (torch.arange(P)[None] >= torch.tensor([0, 1, 2, 0, 3, 1, 0, 2])[:B, None]).long()
    r = torch.randint(1, len(tokenizer), (B, T), generator=g)
    m = (torch.arange(T)[None] < torch.tensor([6, 2, 5, 1, 4, 6, 3, 2])[:B, None]).long()
    q, r = q.masked_fill(qm == 0, pad), r.masked_fill(m == 0, pad)
    with torch.no_grad():
        logp = rl.token_logprobs(rl.sequence_logits(policy, q, qm, r, m), r, 1.0) * m
    batch = {"q": q, "qm": qm, "r": r, "m": m, "logp": logp}
    for key in ("adv", "values", "returns", "ref_logp"):
        batch[key] = torch.randn(B, T, generator=g) * m
    batch["ref_logp"] = logp + 0.1 * batch["ref_logp"]
    return batch


def one_update(algo, **flags):
    """The parameters after one ppo_update (one epoch, one minibatch of 8) from a fresh tiny
    GPT-2 (and value model for ppo), and the update's statistics."""
    torch.manual_seed(0)
    policy, tokenizer = rl.load_gpt2(GPT2LMHeadModel, "tiny")
    value_model = rl.ValueModel(rl.RewardModel(policy.transformer)) if algo == "ppo" else None
    batch = padded_rollout(policy, tokenizer)
    args = rl.Args(model_name="tiny", algo=algo, rollout_batch_size=8, minibatch_size=8,
                   ppo_epochs=1, **flags)  # fmt: skip
    params = [*policy.parameters(), *(value_model.parameters() if value_model else [])]
    optimizer = torch.optim.Adam(params, lr=1e-3, eps=args.adam_eps)
    torch.manual_seed(1)
    stats = rl.ppo_update(args, policy, value_model, optimizer, batch, beta=0.1)
    return [p.detach().clone() for p in params], stats


def one_step(stage, **flags):
    """The parameters after one SFT or RM step (a batch of 8, responses of 2 to 10 words)."""
    torch.manual_seed(0)
    policy, tokenizer = rl.load_gpt2(GPT2LMHeadModel, "tiny")
    demos = rl.builtin_demonstrations(np.random.default_rng(0), 8)
    args = rl.Args(model_name="tiny", sft_batch_size=8, sft_epochs=1, rm_batch_size=8,
                   rm_epochs=1, sft_lr=1e-3, rm_lr=1e-3, **flags)  # fmt: skip
    torch.manual_seed(1)
    if stage == "sft":
        rl.stage_sft(args, policy, tokenizer, demos, rl.NullWriter())
        return [p.detach().clone() for p in policy.parameters()]
    others = rl.sample_responses(np.random.default_rng(1), 8)
    pairs = [{"prompt": d["prompt"], "chosen": d["response"], "rejected": o}
             for d, o in zip(demos, others, strict=True)]  # fmt: skip
    rng = np.random.default_rng(0)
    model = rl.stage_reward_model(args, policy, tokenizer, PROMPTS, pairs, rl.NullWriter(), rng)
    return [p.detach().clone() for p in model.parameters()]


def run_job(job, **flags):
    return one_step(job, **flags) if job in ("sft", "rm") else one_update(job, **flags)[0]


def max_difference(a, b):
    return max((x - y).abs().max().item() for x, y in zip(a, b, strict=True))


JOBS = ["sft", "rm", "ppo", "grpo", "dr_grpo"]


@pytest.mark.parametrize("job", JOBS)
def test_gradient_accumulation_gives_the_parameters_of_one_batch(job):
    """K micro-batches (of unequal token counts: 8 responses of 1 to 10 tokens) and one
    optimizer step give the parameters of K = 1, for the SFT and RM losses, PPO's policy and
    value losses, GRPO's and Dr. GRPO's: every normaliser is the whole minibatch's."""
    one = run_job(job)
    for k in (2, 4):
        assert max_difference(run_job(job, gradient_accumulation_steps=k), one) < 1e-6


@pytest.mark.parametrize("choice", ["token", "response"])
def test_grpo_loss_token_is_dapo_token_mean_response_the_papers_mean(sft, choice):
    """--grpo-loss (issue 31): 'token' (the default) is DAPO's Σ_i Σ_t ℓ / Σ_i |y_i|, 'response'
    the paper's mean_i (1/|y_i|) Σ_t ℓ; at ratio 1, ℓ_t = −Â_t + β k3_t. Both hold under
    gradient accumulation (every normaliser is the whole minibatch's)."""
    policy, tokenizer = sft
    b, idx = padded_rollout(policy, tokenizer), torch.arange(8)
    args = rl.Args(model_name="tiny", algo="grpo", grpo_loss=choice)
    with torch.no_grad():
        loss = rl.minibatch_loss(args, policy, None, b, idx, 0.1, idx)[0]
        logp = rl.token_logprobs(rl.sequence_logits(policy, *(b[x] for x in "q qm r m".split())),
                                 b["r"], 1.0)  # fmt: skip
    m = b["m"]
    ell = (-b["adv"] + 0.1 * rl.kl_estimators(logp, b["ref_logp"])[2]) * m
    want = ell.sum() / m.sum() if choice == "token" else (ell.sum(1) / m.sum(1)).mean()
    assert loss.item() == pytest.approx(want.item(), rel=1e-5)
    one = run_job("grpo", grpo_loss=choice)
    assert (
        max_difference(run_job("grpo", grpo_loss=choice, gradient_accumulation_steps=4), one) < 1e-6
    )


@pytest.mark.parametrize("job", ["sft", "ppo"])
def test_a_per_micro_batch_token_mean_fails_the_accumulation_check(job, monkeypatch):
    """The bug of TRL #2617 and #3021: each micro-batch normalised by its own token count,
    then divided by K. The same check fails."""
    one = run_job(job)
    monkeypatch.setattr(rl, "token_share", lambda mask, total=None: torch.tensor(0.5))
    assert max_difference(run_job(job, gradient_accumulation_steps=2), one) > 1e-5


@pytest.mark.parametrize("job", ["sft", "ppo"])
def test_gradient_checkpointing_changes_no_parameter(job):
    on = run_job(job, gradient_checkpointing=True)
    assert max_difference(on, run_job(job)) < 1e-6
    policy, _ = rl.load_gpt2(GPT2LMHeadModel, "tiny")
    rl.checkpointing(policy, rl.Args(gradient_checkpointing=True))
    block = policy.transformer.h[0]
    assert block.gradient_checkpointing and block.training and not policy.training


# bf16 autocast against fp32, one step from the same weights and batch, measured here: the
# losses differ by at most 3e-4 relative (ppo, grpo, dr_grpo); max |Δθ| is 1.3e-3 .. 1.7e-3
# (Adam's first step moves a weight by nearly lr = 1e-3 whatever |g|, so a bf16 gradient that
# flips the sign of a tiny component moves it by up to 2e-3), but only 0.4% .. 0.7% of the
# weights (rm: 919 of 137,217) differ by more than 1e-4.
@pytest.mark.parametrize("job", JOBS)
def test_bf16_step_is_close_to_fp32(job):
    bf16, fp32 = run_job(job, bf16=True), run_job(job)
    assert max_difference(bf16, fp32) < 2e-3
    moved = sum(((a - b).abs() > 1e-4).sum().item() for a, b in zip(bf16, fp32, strict=True))
    assert moved / sum(p.numel() for p in fp32) < 0.02
    if job not in ("sft", "rm"):
        bf16, fp32 = one_update(job, bf16=True)[1], one_update(job)[1]
        for key in ("pg_loss", "value_loss") if job == "ppo" else ("pg_loss",):
            assert bf16[key] == pytest.approx(fp32[key], rel=2e-3)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
def test_bf16_first_minibatch_ratio_is_one(sft, algo):
    """The rollout runs under the same autocast as the update, and log-softmax is fp32: the
    first minibatch reproduces the rollout's log-probs."""
    policy, tokenizer = sft
    policy = copy.deepcopy(policy)
    torch.manual_seed(12)
    args = rl.Args(model_name="tiny", algo=algo, reward="gold", max_new_tokens=12, bf16=True,
                   minibatch_size=8, ppo_epochs=2, gradient_accumulation_steps=2)  # fmt: skip
    reference = copy.deepcopy(policy).requires_grad_(False)
    models = (policy, reference, None, tokenizer, tokenizer)
    value_model = rl.ValueModel(rl.RewardModel(policy.transformer)) if algo == "ppo" else None
    with rl.autocast(args):
        roll, _ = rl.collect_rollout(*models, [p for p in PROMPTS for _ in range(4)], args)
        roll |= rl.algo_advantages(args, roll, value_model, 0.1, 1 if algo == "ppo" else 4)
    trained = [*policy.parameters(), *(value_model.parameters() if value_model else [])]
    stats = rl.ppo_update(args, policy, value_model, torch.optim.Adam(trained, lr=1e-3), roll)
    assert stats["ratio_dev_first_mb"] < 1e-5
    assert stats["approx_kl"] > 0


def test_gpu_check_dry_run_runs_end_to_end_on_the_cpu():
    """benchmarks/gpu_rlhf.sh --dry-run: every configuration of the GPU check, on a 2-layer
    model on the CPU (fp32/bf16 x checkpointing off/on), first-minibatch ratio 1 in each."""
    script = os.path.join(ROOT, "benchmarks", "gpu_rlhf.sh")
    proc = subprocess.run(["bash", script, "--dry-run"], capture_output=True, text=True,
                          timeout=300, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(os.path.join(ROOT, "benchmarks", "out", "rlhf_gpu.json")) as f:
        rows = json.load(f)["rows"]
    assert {(r["bf16"], r["gradient_checkpointing"]) for r in rows} == {
        (a, b) for a in (False, True) for b in (False, True)
    }
    assert all(r["ratio_dev_first_mb"] < 1e-5 and r["response_tokens"] > 0 for r in rows)


def test_conv1d_column_major_keeps_shape_bytes_and_function(monkeypatch):
    """bench_rlhf --conv1d-column-major (the 355M --bf16 memory cell): a Conv1D made after it
    holds the same [in, out] weight, as many bytes, in column-major strides, and computes what
    a row-major copy of that weight computes."""
    import transformers.pytorch_utils as pu

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import bench_rlhf

    monkeypatch.setattr(pu.Conv1D, "__init__", pu.Conv1D.__init__)  # restored after the test
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    bench_rlhf.conv1d_column_major()
    layer = pu.Conv1D(6, 4)
    assert layer.weight.shape == (4, 6) and layer.weight.stride() == (1, 4)
    assert layer.weight.untyped_storage().nbytes() == 4 * 6 * 4
    x = torch.randn(3, 4)
    torch.testing.assert_close(layer(x), x @ layer.weight.contiguous() + layer.bias)
