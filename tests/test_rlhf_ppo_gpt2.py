"""Tests of rlhf_ppo_gpt2.py on the tiny GPT-2: each piece of the RLHF math against a
hand-written or naive computation, the end-to-end invariants that catch the classic RLHF
bugs (ratio 1 at the first step, no off-by-one, padding invariance), and a short run that
must raise the gold score."""

import copy
import dataclasses
import json
import math
import os
import sys

import numpy as np
import pytest
import torch

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
    policy, tokenizer = rl.load_gpt2(rl.GPT2LMHeadModel, "tiny")
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
        values = rl.response_values(value_model, q, qm, r, m) * m
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
    rl.save_pretrained_atomic(policy, tokenizer, path)
    before = sorted(os.listdir(path))

    class Broken:
        def save_pretrained(self, directory):
            os.makedirs(directory)
            open(os.path.join(directory, "half-written"), "w").close()
            raise OSError("disk full")

    with pytest.raises(OSError):
        rl.save_pretrained_atomic(Broken(), tokenizer, path)
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


def test_short_run_raises_gold_score(tmp_path):
    """All three stages, shortened: the gold (VADER) score of the policy's samples, which
    neither the RM nor PPO sees, rises well above that of the SFT policy (+0.53 measured)."""
    args = rl.Args(
        model_name="tiny", seed=1, output_dir=str(tmp_path), sample_every=0,
        sft_demos=2048, sft_epochs=2, rm_pairs=1024, rm_epochs=2,
        ppo_iterations=15, eval_samples=128,
    )  # fmt: skip
    summary = rl.train(args)
    assert summary["sft_well_formed"] > 0.7
    assert summary["final_gold"] > summary["sft_gold"] + 0.15
    for sub in ("sft", "reward_model", "policy"):
        assert os.path.isdir(tmp_path / sub)
