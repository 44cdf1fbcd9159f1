"""The bugs the field has hit, one test per class, each with the public issue it comes from.

Every test runs one check twice: on this project's code, where it must pass, and on a
deliberately broken variant written inside the test (the bug as it was reported), where it
must fail. That second run is the proof that the check would catch the bug. Where an
existing test already covers the project's side, the docstring names it; the broken-variant
proof is added here either way.

The checks read the golden vectors (golden/*.json) where one exists. Every test is fast
(no training, no network)."""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.generation import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

import a2c
import ppo_cartpole
import ppo_continuous
import rlhf_ppo_gpt2 as rlhf
import trpo
import trpo_continuous

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def golden(name):
    return json.loads((GOLDEN / f"{name}.json").read_text())


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(actual, expected, rtol=1e-6, atol=1e-9):
    actual = actual.detach().numpy() if isinstance(actual, torch.Tensor) else actual
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return actual.shape == expected.shape and np.allclose(actual, expected, rtol, atol)


# ---------------------------------------------------------------- 1. truncation ≠ termination


def gae_matches_golden(gae):
    """gae(rewards, values, terminated, truncated, γ, λ) against gae.json (terminations and
    truncations inside the rollouts) and a2c_n_step_return.json (λ = 1, with steps that are
    terminated and truncated at once, which must count as terminal)."""
    for name in ("gae", "a2c_n_step_return"):
        for case in golden(name)["cases"]:
            x = case["inputs"]
            args = (t(x["rewards"]), t(x["values"]), t(x["terminated"]), t(x["truncated"]))
            if not close(gae(*args, x["gamma"], x.get("lam", 1.0)), case["outputs"]["advantages"]):
                return False
    return True


@pytest.mark.parametrize("script", [ppo_cartpole, a2c, trpo, ppo_continuous, trpo_continuous])
def test_truncation_is_not_termination(script):
    """CleanRL #198, #457 and #504 (its continuous PPO cannot learn Pendulum-v1, whose episodes
    only ever truncate): a time-limit truncation was treated as a termination, so V(final
    observation) was never bootstrapped. Spinning Up PR #233 fixes the bootstrap at a timeout
    (pointing to issue #37, where Gym's TimeLimit ends every episode with done = True), and
    its issue #257 and the review of #233 the opposite slip: a step that is terminal *and*
    at the time limit must not be bootstrapped.

    The scripts' side: tests/test_ppo_cartpole.py::test_gae_resets_at_episode_end_and_
    bootstraps_at_truncation, tests/test_a2c.py::test_truncation_bootstraps_and_termination_
    does_not, tests/test_ppo_continuous.py::test_pendulum_truncation_is_bootstrapped,
    tests/test_reinforce.py::test_terminal_step_on_the_time_limit_gets_no_bootstrap and
    tests/test_golden.py::test_gae."""

    def as_the_script_calls_it(rewards, values, term, trunc, gamma, lam):
        return script.gae(rewards, values, term, torch.maximum(term, trunc), gamma, lam)

    def truncation_as_termination(rewards, values, term, trunc, gamma, lam):
        done = torch.maximum(term, trunc)
        return script.gae(rewards, values, done, done, gamma, lam)  # never a bootstrap

    def truncation_wins(rewards, values, term, trunc, gamma, lam):  # both at once: bootstrapped
        return script.gae(rewards, values, term * (1 - trunc), torch.maximum(term, trunc),
                          gamma, lam)  # fmt: skip

    assert gae_matches_golden(as_the_script_calls_it)
    assert not gae_matches_golden(truncation_as_termination)
    assert not gae_matches_golden(truncation_wins)


# ---------------------------------------------------------------- 2. observation statistics


def reloaded_actions_match(script, evaluate_from, tmp_path):
    """Train-time statistics from obs_normalizer_checkpoint.json's stream, a real GaussianAgent,
    a checkpoint written by save_checkpoint; then `evaluate_from(path, eval_obs)` (a loader in
    a fresh process) must give the training process's actions, and the vector's."""
    case = golden("obs_normalizer_checkpoint")["cases"][0]
    x, want = case["inputs"], case["outputs"]
    eval_obs = np.array(x["eval_obs"])
    D = eval_obs.shape[1]
    args = script.Args(norm_obs=True, clip_obs=x["clip"], hidden_size=8)
    torch.manual_seed(0)
    agent = script.GaussianAgent(D, 2, args.hidden_size)
    normalizer = script.Normalizer(D, 1, args)
    for batch in x["stream"]:
        normalizer.observe(np.array(batch))
    obs = script.normalize_obs(eval_obs, *normalizer.frozen_obs_stats(), args.clip_obs)
    with torch.no_grad():
        trained = agent.actor_mean(torch.as_tensor(obs)).numpy()
    path = str(tmp_path / "model.pt")  # what the script saves: weights, args, statistics
    checkpoint = dict(agent=agent.state_dict(), args=dataclasses.asdict(args),
                      normalizer=normalizer.state_dict())  # fmt: skip
    script.save_atomic(checkpoint, path)
    actions, inputs = evaluate_from(path, eval_obs)
    linear = inputs.astype(np.float64) @ np.array(x["W"])  # the vector's linear policy
    return np.array_equal(actions, trained) and close(linear, want["actions"], 1e-5, 1e-6)


def project_loader(script):
    """What --eval-checkpoint does: the saved agent and its saved statistics, frozen
    (normalize_obs, never observe)."""

    def evaluate_from(path, eval_obs):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = script.Args(**ckpt["args"])
        agent = script.GaussianAgent(eval_obs.shape[1], 2, saved.hidden_size)
        agent.load_state_dict(ckpt["agent"])
        normalizer = script.Normalizer(eval_obs.shape[1], 1, saved)
        normalizer.load_state_dict(ckpt["normalizer"])
        obs = script.normalize_obs(eval_obs, *normalizer.frozen_obs_stats(), saved.clip_obs)
        with torch.no_grad():
            return agent.actor_mean(torch.as_tensor(obs)).numpy(), obs

    return evaluate_from


@pytest.mark.parametrize("script", [ppo_continuous, trpo_continuous])
def test_observation_statistics_are_saved_and_frozen(script, tmp_path):
    """CleanRL #425 and #532 (SB3 #870 for VecNormalize): the agent was saved without its
    running observation statistics, so a reloaded agent saw raw observations (μ = 0, σ² = 1)
    and evaluated far below its training returns; or the statistics kept updating during
    evaluation.

    The scripts' side: tests/test_ppo_continuous.py::test_checkpoint_statistics_round_trip_
    and_stay_frozen_at_evaluation, tests/test_trpo_continuous.py::test_eval_checkpoint_uses_
    the_saved_statistics and tests/test_golden.py::test_obs_normalizer_checkpoint."""
    assert reloaded_actions_match(script, project_loader(script), tmp_path)

    def drops_the_statistics(path, eval_obs):  # the weights alone, fresh statistics
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = script.Args(**ckpt["args"])
        agent = script.GaussianAgent(eval_obs.shape[1], 2, saved.hidden_size)
        agent.load_state_dict(ckpt["agent"])
        fresh = script.Normalizer(eval_obs.shape[1], 1, saved)
        obs = script.normalize_obs(eval_obs, *fresh.frozen_obs_stats(), saved.clip_obs)
        with torch.no_grad():
            return agent.actor_mean(torch.as_tensor(obs)).numpy(), obs

    def keeps_updating(path, eval_obs):  # the saved statistics, updated by evaluation
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        saved = script.Args(**ckpt["args"])
        agent = script.GaussianAgent(eval_obs.shape[1], 2, saved.hidden_size)
        agent.load_state_dict(ckpt["agent"])
        normalizer = script.Normalizer(eval_obs.shape[1], 1, saved)
        normalizer.load_state_dict(ckpt["normalizer"])
        obs = normalizer.observe(eval_obs)
        with torch.no_grad():
            return agent.actor_mean(torch.as_tensor(obs)).numpy(), obs

    assert not reloaded_actions_match(script, drops_the_statistics, tmp_path)
    assert not reloaded_actions_match(script, keeps_updating, tmp_path)


# ---------------------------------------------------------------- 3. the score on EOS


def score_lands_on_eos(shaped_rewards):
    """With β = 0 the whole score must sit on the EOS token (or on the last token of a
    response cut at the length limit) and survive the response mask."""
    eos = 9
    responses = torch.tensor([[3, 4, 9, 9, 9, 9], [5, 9, 9, 9, 9, 9], [1, 2, 3, 4, 5, 6],
                              [7, 7, 7, 7, 7, 9]])  # fmt: skip
    mask = rlhf.response_mask_after_eos(responses, eos).double()
    last = torch.tensor([2, 1, 5, 5])  # the EOS position, or the last token without one
    scores = t([1.5, -2.0, 0.75, 3.0])
    zeros = torch.zeros(mask.shape, dtype=torch.float64)
    rewards = shaped_rewards(scores, zeros, zeros, mask, 0.0) * mask
    return close(rewards[torch.arange(4), last], scores) and close(rewards.sum(1), scores)


def test_score_goes_on_the_eos_token_not_on_padding():
    """TRL #3750 and PR #5338: PPOTrainer added the score at sequence_length + 1, the first
    padding token after EOS, which the loss mask then zeroed, so the score never trained
    anything (the N+ implementation details of RLHF put it on EOS).

    The script's side: tests/test_rlhf_ppo_gpt2.py::test_kl_shaped_rewards and
    tests/test_golden.py::test_rlhf_kl_shaped_rewards."""
    assert score_lands_on_eos(rlhf.kl_shaped_rewards)

    def on_first_padding(scores, logprobs, ref_logprobs, mask, beta):
        rewards = -beta * (logprobs - ref_logprobs) * mask
        last = mask.sum(1).long() - 1
        end = torch.where(last + 1 < mask.shape[1], last + 1, last)  # TRL before PR #5338
        rewards[torch.arange(len(rewards)), end] += scores
        return rewards

    assert not score_lands_on_eos(on_first_padding)


# ---------------------------------------------------------------- 4. sampling vs scoring


def sampler_logprobs(logits, tokens, temperature, top_k, top_p):
    """log π of each token under the distribution Hugging Face generate() samples from: its
    own logits processors (temperature, then top-k, then top-p), renormalised."""
    procs = [TemperatureLogitsWarper(temperature)]
    procs += [TopKLogitsWarper(top_k)] if top_k > 0 else []
    procs += [TopPLogitsWarper(top_p)] if top_p < 1 else []
    flat = logits.reshape(-1, logits.shape[-1]).float()
    scores = LogitsProcessorList(procs)(torch.zeros(len(flat), 1, dtype=torch.long), flat)
    logp = F.log_softmax(scores, -1).view(logits.shape)
    return logp.gather(-1, tokens[..., None]).squeeze(-1).double()


def ratio_is_one_before_any_update(score, sampling):
    """The trainer's log-probs of the sampled tokens, against the sampler's, for every case of
    rlhf_truncated_sampling_logprobs.json that the sampler settings (T, top_k, top_p) allow."""
    T, top_k, top_p = sampling
    for case in golden("rlhf_truncated_sampling_logprobs")["cases"]:
        x = case["inputs"]
        logits, tokens = t(x["logits"]), torch.tensor(x["tokens"])
        gen = sampler_logprobs(logits, tokens, T, top_k, top_p)
        if not torch.isfinite(gen).all():
            continue  # a token this sampler could not have drawn
        if not close((score(logits, tokens) - gen).exp(), np.ones(tokens.shape), 1e-5, 1e-6):
            return False
    return True


def test_scoring_uses_the_distribution_that_sampled():
    """TRL #4159 (vLLM's log-probs at temperature ≠ 1 against the trainer's: a first-token
    ratio of 2) and TRL #6789 (under top-p/top-k the sampler renormalises over the kept
    tokens while the trainer scores the full vocabulary, so the ratio is biased): the trainer
    must score the sampled tokens under the distribution that sampled them.

    The script samples at --temperature with top_k=0, top_p=1 (read here from the arguments
    that generate_responses passes to generate()) and scores with token_logprobs at the same
    T. The script's side also: tests/test_rlhf_ppo_gpt2.py::test_logprobs_line_up_with_
    sampled_tokens_and_generate_scores, ::test_first_minibatch_ratio_is_one and
    tests/test_golden.py::test_rlhf_truncated_sampling_logprobs."""
    T = 0.7
    seen = {}

    class Policy(nn.Module):  # records generate()'s arguments; returns one token per prompt
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def generate(self, **kwargs):
            seen.update(kwargs)
            return SimpleNamespace(sequences=torch.cat([kwargs["input_ids"],
                                                        torch.ones(2, 1).long()], 1))  # fmt: skip

    def tokenizer(prompts, **kwargs):
        return SimpleNamespace(input_ids=torch.ones(2, 1).long(), attention_mask=torch.ones(2, 1))

    tokenizer.pad_token_id = tokenizer.eos_token_id = 0
    rlhf.generate_responses(Policy(), tokenizer, ["a", "b"], 1, T)
    sampling = (seen["temperature"], seen.get("top_k") or 0, seen.get("top_p", 1.0))
    assert sampling == (T, 0, 1.0)

    def project_score(logits, tokens):
        return rlhf.token_logprobs(logits, tokens, T).double()

    assert ratio_is_one_before_any_update(project_score, sampling)

    def scored_at_temperature_one(logits, tokens):  # TRL #4159
        return rlhf.token_logprobs(logits, tokens, 1.0).double()

    assert not ratio_is_one_before_any_update(scored_at_temperature_one, sampling)
    # TRL #6789: the sampler truncates, the trainer scores the full vocabulary at T
    assert not ratio_is_one_before_any_update(project_score, (T, 4, 0.9))
    # ... and the golden vector's reference is what generate()'s processors give
    for case in golden("rlhf_truncated_sampling_logprobs")["cases"]:
        x = case["inputs"]
        gen = sampler_logprobs(t(x["logits"]), torch.tensor(x["tokens"]), x["temperature"],
                               x["top_k"], x["top_p"])  # fmt: skip
        assert close(gen, case["outputs"]["logprobs_sampling"], 1e-5, 1e-6)


# ---------------------------------------------------------------- 5. GRPO's length bias


def token_weights(loss_fn, lengths, L=6):
    """∂L/∂log π per token at ratio 1, β = 0, the same advantage Â = 1 on every response."""
    mask = t([[1.0] * n + [0.0] * (L - n) for n in lengths])
    logp = torch.zeros(mask.shape, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(logp, logp.detach(), logp.detach(), torch.ones_like(mask), mask)
    return -torch.autograd.grad(loss, logp)[0][mask.bool()], mask


def every_token_weighs_the_same(loss_fn):
    weights, _ = token_weights(loss_fn, [6, 1, 3, 2])
    return close(weights, np.full(len(weights), weights[0].item()))


def group_loss_is_zero_at_ratio_one(loss_fn):
    """TRL #2995's check: with group-normalised advantages (they sum to 0 in the group), β = 0
    and one iteration, GRPO's per-response mean makes the loss exactly 0."""
    lengths, L = [6, 1, 3, 2], 6
    mask = t([[1.0] * n + [0.0] * (L - n) for n in lengths])
    adv = rlhf.group_advantages(t([1.0, 0.0, 0.5, 2.0]), 4, scale_by_std=True)[:, None] * mask
    logp = torch.zeros(mask.shape, dtype=torch.float64)
    return abs(loss_fn(logp, logp, logp, adv, mask).item()) < 1e-12


def test_grpo_per_response_mean_and_dr_grpo_constant():
    """TRL #2995: GRPO's loss was averaged over all tokens of the batch instead of per
    response then over responses (Shao et al. 2024), so a group's zero-sum advantages no
    longer gave a zero loss; and TRL PR #3138: Dr. GRPO (Liu et al. 2025) must drop the
    per-response 1/|y_i|, which makes short responses' tokens weigh more (the length bias).

    The script's side: tests/test_rlhf_ppo_gpt2.py::test_losses_ignore_padding_width and
    tests/test_golden.py::test_rlhf_grpo_loss, ::test_rlhf_loss_aggregation."""

    def grpo(logp, old, ref, adv, mask):
        return rlhf.grpo_policy_loss(logp, old, ref, adv, mask, 0.2, 0.0, 0)[0]

    def dr_grpo(logp, old, ref, adv, mask):
        return rlhf.grpo_policy_loss(logp, old, ref, adv, mask, 0.2, 0.0, mask.numel())[0]

    assert group_loss_is_zero_at_ratio_one(grpo)
    assert every_token_weighs_the_same(dr_grpo)
    # GRPO's own weights are the paper's 1/(B |y_i|): the bias Dr. GRPO removes, by design
    weights, mask = token_weights(grpo, [6, 1, 3, 2])
    per_row = (1 / (len(mask) * mask.sum(1, keepdim=True))).expand_as(mask)[mask.bool()]
    assert close(weights, per_row)

    def token_mean(logp, old, ref, adv, mask):  # TRL before #2995's fix: one global mean
        return rlhf.token_policy_loss(logp, old, adv, mask, 0.2)[0]

    def dr_grpo_keeping_one_over_length(logp, old, ref, adv, mask):  # the gap of TRL PR #3138
        per_token = rlhf.grpo_policy_loss(logp, old, ref, adv, mask, 0.2, 0.0, 0)[0]
        return per_token * len(mask) * mask.shape[1] / mask.numel()

    assert not group_loss_is_zero_at_ratio_one(token_mean)
    assert not every_token_weighs_the_same(dr_grpo_keeping_one_over_length)


# ---------------------------------------------------------------- 6. k3's gradient


def expected_gradient_is_grad_kl(per_sample_loss):
    """E_{a~π}[∇_θ loss(a)] by enumeration over a categorical π_θ = softmax(θ), against the
    exact ∇_θ KL(π_θ ‖ π_ref): the gradient that a KL penalty on the policy must follow."""
    theta = t([0.3, -1.2, 0.8, 0.1, -0.4]).requires_grad_(True)
    ref = F.log_softmax(t([1.0, 0.2, -0.5, 0.0, 0.7]), -1)
    logp = F.log_softmax(theta, -1)
    kl = (logp.exp() * (logp - ref)).sum()
    want = torch.autograd.grad(kl, theta, retain_graph=True)[0]
    probs = logp.exp().detach()
    expected = sum(
        probs[a]
        * torch.autograd.grad(per_sample_loss(logp[a], ref[a]), theta, retain_graph=True)[0]
        for a in range(len(probs))
    )
    return close(expected, want)


def test_kl_penalty_follows_the_gradient_of_the_kl():
    """TRL #3104 and #4967, verl PR #2953: k3 = (r − 1) − log r, r = π_ref/π, is an unbiased
    estimate of KL(π‖π_ref), but differentiated as a loss term (GRPO) its expected gradient is
    ∇KL(π_ref‖π), the other direction. The script's PPO and RLOO put k1 in the reward, whose
    score-function gradient is ∇KL(π‖π_ref); its GRPO keeps the paper's k3 term (DeepSeekMath),
    and kl_estimators' docstring says which gradient that gives, which is checked here too.

    The script's side: tests/test_rlhf_ppo_gpt2.py::test_kl_estimators_by_enumeration and
    tests/test_golden.py::test_rlhf_kl_estimators."""

    def k1_in_the_reward(logp_a, ref_a):  # kl_shaped_rewards → token_policy_loss at ratio 1
        logp, ref, mask = logp_a.view(1, 1), ref_a.view(1, 1), torch.ones(1, 1)
        reward = rlhf.kl_shaped_rewards(torch.zeros(1), logp.detach(), ref, mask, 1.0)
        return rlhf.token_policy_loss(logp, logp.detach(), reward, mask, 0.2)[0]

    def k3_as_a_loss_term(logp_a, ref_a):  # GRPO's β·k3, through the script's grpo_policy_loss
        logp, ref, mask = logp_a.view(1, 1), ref_a.view(1, 1), torch.ones(1, 1)
        return rlhf.grpo_policy_loss(logp, logp.detach(), ref, torch.zeros(1, 1), mask, 0.2,
                                     1.0)[0]  # fmt: skip

    def k3_times_ratio(logp_a, ref_a):  # the correction of DeepSeek-V3.2 (TRL's default now)
        ratio = (logp_a - logp_a.detach()).exp()
        return ratio * rlhf.kl_estimators(logp_a, ref_a)[2]

    assert expected_gradient_is_grad_kl(k1_in_the_reward)
    assert expected_gradient_is_grad_kl(k3_times_ratio)
    assert not expected_gradient_is_grad_kl(k3_as_a_loss_term)


# ---------------------------------------------------------------- 7. gradient accumulation


def accumulation_equals_one_batch(micro_loss):
    """Σ over micro-batches of ∇ micro_loss(ℓ rows, mask rows, G) against the large batch's
    token-mean gradient, on rlhf_grad_accumulation.json (micro-batches with unequal numbers
    of real tokens)."""
    for case in golden("rlhf_grad_accumulation")["cases"]:
        x = case["inputs"]
        ell = t(x["per_token_loss"]).requires_grad_(True)
        mask, micro = t(x["mask"]), x["micro_batches"]
        total = sum(micro_loss(ell[rows], mask[rows], mask, len(micro)) for rows in micro)
        grad = torch.autograd.grad(total, ell)[0]
        if not close(grad, case["outputs"]["token-mean"]["grad_per_token_loss"]):
            return False
    return True


def test_gradient_accumulation_with_padding_equals_one_batch(monkeypatch):
    """TRL #2617 and #3021 (and the Hugging Face Trainer's fix with num_items_in_batch): with
    gradient accumulation each micro-batch was averaged over its own tokens and then divided
    by the number of micro-batches, which weighs tokens of short micro-batches more whenever
    padding makes the token counts differ.

    The script splits a minibatch over data-parallel ranks instead, and token_share scales
    each rank's token mean by W·N_rank/N_global. Each micro-batch plays one rank here, the
    all-reduce of the token counts done by hand. The script's side also:
    tests/test_golden.py::test_rlhf_grad_accumulation and
    tests/test_rlhf_ppo_gpt2_distributed.py."""

    def as_a_rank(ell, mask, whole_mask, G):
        monkeypatch.setattr(rlhf, "world", lambda: (0, G))
        monkeypatch.setattr(rlhf, "all_reduce_sum", lambda n: whole_mask.sum().to(n.dtype))
        return rlhf.masked_mean(ell * mask, mask) * rlhf.token_share(mask).double() / G

    def own_token_mean(ell, mask, whole_mask, G):  # the reported bug
        return rlhf.masked_mean(ell * mask, mask) / G

    assert accumulation_equals_one_batch(as_a_rank)
    assert not accumulation_equals_one_batch(own_token_mean)


# ---------------------------------------------------------------- 8. the reward's time step


class ActionEcho(gym.Env):
    """Pays r = 10·k + a for action a in the episode's k-th state (k sits in obs[0]); the
    episodes end after 3 to 5 steps, terminated or truncated."""

    observation_space = gym.spaces.Box(-1e6, 1e6, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.k, self.length = 0, int(self.np_random.integers(3, 6))
        return np.array([0, 0, 0, 0], np.float32), {}

    def step(self, action):
        reward = 10.0 * self.k + int(action)
        self.k += 1
        end = self.k >= self.length
        return np.array([self.k, 0, 0, 0], np.float32), reward, end and self.length == 3, end, {}


def rewards_follow_their_actions(rollout):
    """reward[t] must be the reward that followed action[t] in obs[t], on every real step."""
    envs = gym.vector.SyncVectorEnv([ActionEcho for _ in range(3)])
    obs, _ = envs.reset(seed=0)
    torch.manual_seed(0)
    agent = ppo_cartpole.Agent(4, 2)
    b = rollout(agent, envs, obs, np.zeros(3, bool), 20, torch.device("cpu"))[0]
    valid = b["valid"]
    want = 10 * b["obs"][:-1, :, 0] + b["action"]
    return bool(valid[1:].any()) and torch.equal(b["reward"][valid], want[valid].float())


def test_reward_is_stored_with_the_action_that_earned_it():
    """Spinning Up #50 (and #67, fixed by PR #126): the buffer stored each observation and
    action with the reward *before* them, r_{t−1}, delaying every reward by one step; silent
    with dense rewards, harmful when the reward comes at the end.

    The scripts' rollout (ppo_cartpole's; a2c and trpo hold identical copies, as
    tests/test_shared_code.py proves) against an environment whose reward names the action
    and the step that earned it."""
    assert rewards_follow_their_actions(ppo_cartpole.rollout)

    def shifted(*args):  # stores r_{t−1} with (s_t, a_t)
        b, obs, done = ppo_cartpole.rollout(*args)
        b["reward"] = torch.cat([torch.zeros_like(b["reward"][:1]), b["reward"][:-1]])
        return b, obs, done

    assert not rewards_follow_their_actions(shifted)


# ---------------------------------------------------------------- 9. TRPO's KL direction


class Linear(nn.Module):
    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(t(W))

    def forward(self, obs):
        return obs @ self.W

    def logits(self, obs):  # the distribution's parameters, as trpo_step takes them
        return (self(obs),)


def line_search_bounds_kl_old_new(kl):
    """trpo_step.json's cases through trpo.trpo_step with KL(π_p ‖ π_q) = kl(logits_p,
    logits_q): the KL that the line search measures and bounds must be mean_s KL(π_θold ‖ π_θ)
    (the TRPO paper's eq. 12), and the accepted parameters those of the vector."""
    for case in golden("trpo_step")["cases"]:
        x, want = case["inputs"], case["outputs"]
        policy = Linear(x["W"])
        args = SimpleNamespace(max_kl=x["max_kl"], cg_damping=x["damping"],
                               cg_iters=4 * policy.W.numel(), cg_tol=1e-12,
                               line_search_steps=x["ls_steps"])  # fmt: skip
        step = (t(x["obs"]), torch.tensor(x["actions"]), t(x["adv"]), args)
        stats = trpo.trpo_step([policy.W], policy.logits, trpo.categorical_log_prob, kl, *step)
        if not (close(stats["kl"], want["kl"]) and close(policy.W, want["W_new"])):
            return False
    return True


def test_trpo_bounds_the_kl_from_the_old_policy():
    """Spinning Up #264 (and #443, PR #192): the TRPO code measured KL(π_θ ‖ π_θold), the
    reverse of the paper's constraint KL(π_θold ‖ π_θ) ≤ δ. The Fisher matrix, hence the
    step's direction and size, is the same either way (the second-order terms agree); the
    line search's real KL is not. sb3-contrib's TRPO measures the reverse too (see
    golden/README.md's conformance table).

    The script's side: tests/test_golden.py::test_trpo_step and ::test_categorical_kl;
    trpo_continuous shares trpo_step with gaussian_kl."""
    assert line_search_bounds_kl_old_new(trpo.categorical_kl)  # as train() passes it

    def reverse(logits_old, logits_new):  # KL(π_θ ‖ π_θold)
        return trpo.categorical_kl(logits_new, logits_old)

    assert not line_search_bounds_kl_old_new(reverse)
