"""Full three-stage RLHF on GPT-2 in one file: supervised fine-tuning (SFT), a reward model
(RM) trained on pairwise preferences, and PPO against the RM with a per-token KL penalty to
the SFT model.

The recipe of Ziegler et al. 2019 (https://arxiv.org/abs/1909.08593), Stiennon et al. 2020
(https://arxiv.org/abs/2009.01325) and Ouyang et al. 2022 (https://arxiv.org/abs/2203.02155),
with the details catalogued by Huang et al., "The N Implementation Details of RLHF with PPO"
(2023) and "The N+ Implementation Details of RLHF with PPO: A Case Study on TL;DR" (2024).
PPO is Schulman et al. 2017 (https://arxiv.org/abs/1707.06347), GAE Schulman et al. 2015
(https://arxiv.org/abs/1506.02438). The built-in task asks the policy to write positive movie
reviews; the VADER sentiment of a review is the gold score that the simulated annotators and
the evaluation use, and the review grammar tells whether the policy has degenerated.

Stage 3 can also be one of three critic-free policy gradients that take their baseline from
k samples of the same prompt (`--algo`), sharing every line with PPO but the ones that differ:
RLOO (Kool et al. 2019; Ahmadian et al. 2024, https://arxiv.org/abs/2402.14740), GRPO (Shao
et al. 2024, https://arxiv.org/abs/2402.03300) and Dr. GRPO (Liu et al. 2025,
https://arxiv.org/abs/2503.20783). Departures from the papers, on purpose:
- all three reuse PPO's update (clipped ratio, --ppo-epochs x minibatches; the RLOO paper
  takes one on-policy step): the same schedule makes the comparison fair, and with
  --ppo-epochs 1 and one minibatch the ratio is 1 and the update is plain REINFORCE;
- GRPO's β is adapted by the same KL controller as PPO's, from --loss-kl-coef (the paper
  keeps it fixed), and its loss is DAPO's token mean (Yu et al. 2025; --grpo-loss response:
  the paper's); Dr. GRPO keeps the k3 term (the paper drops it, with a checkable reward).
REINFORCE++ (Hu 2025, https://arxiv.org/abs/2501.03262) is critic-free with one sample per
prompt: PPO's KL-shaped token rewards and clipped update, with the return as Â, whitened over
the global batch. DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) needs no RM and
no sampling: stage 3 fits the policy to stage 2's preference pairs, the SFT model as π_ref.

    python rlhf_ppo_gpt2.py --model-name tiny --output-dir runs/rlhf   # built-in task, CPU, ~1 min
    python rlhf_ppo_gpt2.py --model-name tiny --algo grpo              # critic-free, 16 prompts x 4
    python rlhf_ppo_gpt2.py --model-name tiny --algo dpo               # offline, on the RM's pairs
    python rlhf_ppo_gpt2.py --reward-model-path runs/rm/reward_model   # an RM of reward_model.py
    torchrun --nproc-per-node 2 rlhf_ppo_gpt2.py --model-name tiny     # data parallel (DDP)

--model-name gpt2 is read from a local directory or the Hugging Face cache, else downloaded;
with HF_HUB_OFFLINE=1 a missing model fails at once instead of after a minute of retries.
"""

import signal

if __name__ == "__main__":  # until main() runs, Ctrl-C ends the process without a traceback
    signal.signal(signal.SIGINT, signal.SIG_DFL)

import argparse
import contextlib
import copy
import dataclasses
import functools
import glob
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging


def flag(default, help, rule=None):
    """A field of Args that is also a --flag; parse_args checks its rule (see RULES)."""
    return dataclasses.field(default=default, metadata=dict(help=help, rule=rule))


@dataclasses.dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy and torch", "in [0, 2^32)")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "sft/, reward_model/, policy/ and logs go here; default runs/...")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
    model_name: str = flag("gpt2", "'gpt2' (pretrained; hub name or local dir) or 'tiny' (offline)")
    sft_data: str = flag("", "JSONL of {prompt, response} for SFT; '' = built-in demonstrations")
    preference_data: str = flag("", "JSONL of {prompt, chosen, rejected}; '' = annotators label")
    reward_model_path: str = flag("", "RM saved by reward_model.py; '' = train one inline")
    annotator_temperature: float = flag(0.1, "τ of the simulated annotators; 0 = noiseless", ">= 0")
    threads: int = flag(0, "torch CPU threads; 0 = 1 for --model-name tiny, else torch's", ">= 0")
    bf16: bool = flag(False, "bfloat16 autocast; weights, Adam state and log-softmax stay fp32")
    gradient_accumulation_steps: int = flag(1, "micro-batches per optimizer step, any stage", "> 0")
    gradient_checkpointing: bool = flag(False, "recompute each block's activations in backward")
    # Stage 1: SFT
    sft_demos: int = flag(6144, "built-in demonstrations to fine-tune on", "> 0")
    sft_epochs: int = flag(3, "passes over the demonstrations", ">= 0")
    sft_batch_size: int = flag(32, "demonstrations per SFT step", "> 0")
    sft_lr: float = flag(3e-3, "Adam step size of SFT", "> 0")
    # Stage 2: RM
    rm_pairs: int = flag(4096, "preference pairs sampled from the SFT policy (RM, DPO)", "> 0")
    rm_epochs: int = flag(2, "passes over the preference pairs", ">= 0")
    rm_batch_size: int = flag(32, "pairs per RM step", "> 0")
    rm_lr: float = flag(5e-4, "Adam step size of the RM", "> 0")
    # Stage 3: PPO, or a critic-free policy gradient
    algo: str = flag("ppo", "stage 3", ("ppo", "rloo", "grpo", "dr_grpo", "reinforce_pp", "dpo"))
    reward: str = flag("rm", "stage-3 reward: the learned RM or the gold scorer", ("rm", "gold"))
    samples_per_prompt: int = flag(0, "responses per prompt; 0: 4 (group baselines) or 1", ">= 0")
    ppo_iterations: int = flag(40, "rollout-then-update iterations", ">= 0")
    rollout_batch_size: int = flag(64, "responses per iteration (prompts x samples)", "> 0")
    minibatch_size: int = flag(16, "responses per gradient step", "> 0")
    ppo_epochs: int = flag(4, "passes over each rollout batch", "> 0")
    learning_rate: float = flag(1e-4, "Adam step size of the policy and the value model", "> 0")
    adam_eps: float = flag(1e-5, "Adam ε (PyTorch adds it outside the sqrt, TF inside)", "> 0")
    temperature: float = flag(1.0, "sampling temperature; log-probs use it too", "> 0")
    max_new_tokens: int = flag(16, "longest response; a response without EOS is cut", "> 0")
    clip_coef: float = flag(0.2, "ε of the PPO ratio clip", ">= 0")
    value_clip: float = flag(0.2, "clip of the value change per update; 0 = none", ">= 0")
    max_grad_norm: float = flag(1.0, "gradient-norm clip, of each model separately", "> 0")
    gamma: float = flag(1.0, "discount γ over response tokens", "in [0, 1]")
    gae_lambda: float = flag(0.95, "GAE λ over response tokens", "in [0, 1]")
    init_kl_coef: float = flag(0.2, "initial β of the KL penalty in the reward (not grpo)", ">= 0")
    loss_kl_coef: float = flag(0.5, "initial β of the k3 KL loss term (grpo, dr_grpo)", ">= 0")
    grpo_loss: str = flag("token", "grpo: token mean (DAPO) or per response", ("token", "response"))
    kl_target: float = flag(4.0, "target KL(π‖π_ref), nats per response; 0 = fixed β", ">= 0")
    kl_horizon: int = flag(500, "horizon (in responses) of the adaptive KL controller", "> 0")
    kl_control: str = flag("", "fixed/adaptive β; '' = fixed for rloo", ("", "fixed", "adaptive"))
    no_eos_penalty: float = flag(1.0, "subtracted from the score of a response with no EOS", ">= 0")
    eval_samples: int = flag(256, "responses to evaluate SFT and final policy (and RM norm)", "> 0")
    sample_every: int = flag(10, "print sample responses every N iterations; 0 = never", ">= 0")
    # Stage 3 of --algo dpo, instead of the above: no RM, no sampling
    dpo_beta: float = flag(2.0, "β of DPO: its implicit reward is β log π/π_ref", "> 0")
    dpo_epochs: int = flag(2, "passes of DPO over the preference pairs", ">= 0")
    dpo_batch_size: int = flag(32, "pairs per DPO step", "> 0")
    dpo_lr: float = flag(1e-3, "Adam step size of DPO", "> 0")


# ---- The math: pure functions of tensors, each checked alone by the tests ----


def positions_from_mask(mask):
    """p_t = (sum_{s<=t} m_s) - 1: the index of each real token among the real tokens.

    With left-padded prompts the first real token must sit at position 0, as it did in
    pre-training; arange() positions would shift every token by the pad count (Huang et al.
    2023). Pads get 0; they are masked out of attention anyway."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits, tokens, temperature):
    """log pi(a_t | s_t) = log_softmax(z_t / T)[a_t], with the T that sampling used.

    logits[:, t] must be the logits that predicted tokens[:, t]. Sampling at T but scoring at
    T = 1 would make the PPO ratio differ from 1 before any update."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits, temperature):
    """H_t = -sum_a p_a log p_a with p = softmax(z_t / T), per token."""
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    return -(logp.exp() * logp).sum(-1)


def masked_mean(x, mask):
    """sum(x * m) / sum(m)."""
    return (x * mask).sum() / mask.sum()


def masked_whiten(x, mask, eps=1e-8):
    """(x - mu) / sqrt(var + eps), with mu and (unbiased) var over the unmasked entries only;
    masked entries come out 0, so padding never leaks into the statistics or the loss."""
    mu = masked_mean(x, mask)
    var = masked_mean((x - mu) ** 2, mask) * mask.sum() / (mask.sum() - 1)
    return (x - mu) * torch.rsqrt(var + eps) * mask


def sft_loss(logits, labels, loss_mask):
    """L_SFT = -(1/|R|) sum_{t in R} log p(x_t | x_<t), over the response tokens R of the batch.

    logits[:, t] predicts labels[:, t + 1]. R holds the response tokens and the appended EOS
    (so the model learns to stop); prompt tokens and padding have loss_mask 0, so whatever
    sits in their labels does not matter."""
    mask = loss_mask[:, 1:].float()
    targets = torch.where(mask.bool(), labels[:, 1:], 0)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1))
    return -(logp.squeeze(-1) * mask).sum() / mask.sum()


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta):
    """r_t = -beta (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) + [t = last real token] r_phi(x, y).

    The RM judges the whole response, so its score lands once, on the last real token; the
    KL penalty (Ziegler et al. 2019) is paid on every response token; padding after
    EOS gets 0. mask must be a prefix of ones (the response, EOS included)."""
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(rewards)), last] += scores
    return rewards


def token_gae(rewards, values, mask, gamma, lam):
    """GAE over the response tokens of a [batch, T] rollout; returns (Â, returns).

    δ_t = r_t + γ V_{t+1} − V_t,   Â_t = δ_t + γλ Â_{t+1},   R_t = Â_t + V_t.
    Rewards, V and Â are zero past the last real token, so an episode ends at EOS (or at the
    length cut) with no bootstrap, and padding neither gets nor leaks any advantage."""
    rewards, values = rewards * mask, values * mask
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] if t + 1 < rewards.shape[1] else 0.0
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = delta + gamma * lam * next_adv
        adv[:, t] = next_adv
    adv = adv * mask
    return adv, (adv + values) * mask


def token_policy_loss(logprobs, old_logprobs, advantages, mask, clip_coef):
    """L_CLIP = -E_t[min(rho_t A_t, clip(rho_t, 1-eps, 1+eps) A_t)],  rho_t = pi/pi_old.

    Also returns the clip fraction and the k3 estimate of KL(pi_old || pi):
    (rho - 1) - log rho, which is unbiased and never negative (Schulman, 2020)."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    # -min(rho A, clip(rho) A) = max(-rho A, -clip(rho) A)
    losses = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip_coef).float(), mask)
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    return masked_mean(losses, mask), clipfrac, approx_kl


def token_value_loss(values, old_values, returns, mask, clip_coef):
    """L_V = 1/2 E_t[max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)].

    The value function may not move further than c from its rollout-time value in one
    update, as the policy's ratio may not leave [1-eps, 1+eps]; c = 0 turns the clip off."""
    if clip_coef <= 0:
        return 0.5 * masked_mean((values - returns) ** 2, mask)
    clipped = old_values + (values - old_values).clamp(-clip_coef, clip_coef)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_coef(beta, kl, kl_target, n_steps, horizon):
    """Ziegler et al. 2019 (as in their code): e = clip(KL / KL_target - 1, -0.2, 0.2),
    beta <- beta (1 + e n_steps / horizon). kl_target = 0 keeps beta fixed.

    The error is clipped, so one noisy batch moves beta by at most 20% of n_steps/horizon."""
    if kl_target <= 0:
        return beta
    e = min(max(kl / kl_target - 1.0, -0.2), 0.2)
    return beta * (1.0 + e * n_steps / horizon)


def kl_estimators(logprobs, ref_logprobs):
    """Single-sample estimators of KL(π‖π_ref) per token (Schulman 2020), for tokens sampled
    from π, with log r = log π_ref(a_t) − log π(a_t):

    k1 = −log r,   k2 = ½ (log r)²,   k3 = (r − 1) − log r.

    E_π[k1] = E_π[k3] = KL(π‖π_ref); k2 is biased (right to second order), k3 never negative.
    As loss terms, differentiated at fixed samples, their expected gradients are 0, ∇KL(π‖π_ref)
    and ∇KL(π_ref‖π): k3 in the loss (GRPO) pulls on the forward KL, not the one it
    estimates (equal only to first order near π_ref). PPO and RLOO sum k1 into the reward
    instead, where the score-function gradient of E[Σ k1] is ∇KL(π‖π_ref), unbiased."""
    log_r = ref_logprobs - logprobs
    return -log_r, 0.5 * log_r**2, log_r.exp() - 1 - log_r


def rloo_advantages(rewards, k):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024) for rewards grouped k
    consecutive per prompt: the baseline of sample i is the mean reward of the other k − 1,

    Â_i = R_i − 1/(k−1) Σ_{j≠i} R_j  (= k/(k−1) (R_i − mean_j R_j)).

    The baseline does not depend on y_i, so the estimator stays unbiased."""
    R = rewards.view(-1, k)
    return (R - (R.sum(1, keepdim=True) - R) / (k - 1)).flatten()


def group_advantages(rewards, k, scale_by_std, eps=1e-4):
    """Group-relative advantages for rewards grouped k consecutive per prompt:

    GRPO (Shao et al. 2024):       Â_i = (r_i − mean(r)) / (std(r) + ε)
    Dr. GRPO (Liu et al. 2025):    Â_i = r_i − mean(r)          (scale_by_std=False)

    std is the sample std (k − 1 in the denominator), as in TRL. A group whose rewards are all
    equal carries no signal: its advantages are exactly 0 (never NaN, whatever ε is)."""
    r = rewards.view(-1, k)
    same = r.max(1, keepdim=True).values == r.min(1, keepdim=True).values
    adv = r - r.mean(1, keepdim=True)
    if scale_by_std:
        adv = adv / (r.std(1, keepdim=True) + eps)
    return adv.masked_fill(same, 0.0).flatten()


def reinforce_pp_advantages(rewards, mask, gamma):
    """REINFORCE++ (Hu 2025): the return of kl_shaped_rewards' token rewards, whitened over every
    response token of the global batch (all ranks under torchrun), with no critic and no group:

    G_t = Σ_{s≥t} γ^{s−t} r_s,   Â_t = (G_t − mean(G)) / std(G),   mean, std over all tokens.

    RLOO and GRPO subtract a baseline per prompt's group of k; REINFORCE++ subtracts the batch
    mean, so it needs one sample per prompt, and adding c to the rewards of one prompt's responses
    moves every Â of the batch (RLOO's and GRPO's do not move). G is token_gae with V = 0, λ = 1."""
    returns = token_gae(rewards, torch.zeros_like(rewards), mask, gamma, 1.0)[1]
    return global_masked_whiten(returns, mask)


def dpo_loss(logp_chosen, logp_rejected, ref_chosen, ref_rejected, beta):
    """DPO (Rafailov et al. 2023): the Bradley-Terry loss of the implicit reward
    r(x, y) = β (log π(y|x) − log π_ref(y|x)), log π(y|x) summed over y's tokens and EOS:

    L = −mean log σ(β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]).

    At π = π_ref the margin is 0 and L = log 2. Returns L and the mean margin r(y_w) − r(y_l)."""
    r_chosen, r_rejected = beta * (logp_chosen - ref_chosen), beta * (logp_rejected - ref_rejected)
    return bradley_terry_loss(r_chosen, r_rejected), (r_chosen - r_rejected).detach().mean()


def grpo_policy_loss(logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_coef, beta,
                     constant=0):  # fmt: skip
    """GRPO's loss (Shao et al. 2024, eq. 3): the clipped surrogate plus a k3 KL term per token,

    ℓ_t = −min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε) Â_t) + β k3_t,   ρ_t = π/π_old,
    L = mean_i (1/|y_i|) Σ_t ℓ_{i,t}        (per response, then over responses), or
    L = Σ_i Σ_t ℓ_{i,t} / C       (C = constant > 0: Dr. GRPO's most tokens; DAPO's Σ_i |y_i|).

    GRPO's per-response mean gives each token of a short response more weight than one of a
    long response (a length bias), its KL term too; a constant does not. Also returns the clip
    fraction and approx. KL(π_old‖π), as token_policy_loss does."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    # −min(ρ Â, clip(ρ) Â) = max(−ρ Â, −clip(ρ) Â)
    surrogate = torch.max(-advantages * ratio,
                          -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef))  # fmt: skip
    losses = (surrogate + beta * kl_estimators(logprobs, ref_logprobs)[2]) * mask
    loss = losses.sum() / constant if constant > 0 else (losses.sum(1) / mask.sum(1)).mean()
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1).abs() > clip_coef).float(), mask)
        approx_kl = masked_mean(ratio - 1 - log_ratio, mask)
    return loss, clipfrac, approx_kl


def response_mask_after_eos(responses, eos_id):
    """m_t = 1 up to and including the first EOS, 0 after it (where generate() pads).

    GPT-2 pads with EOS itself, so padding is found by position, not by token id."""
    is_eos = responses == eos_id
    # eos seen strictly before t  <=>  t is padding
    return ((is_eos.long().cumsum(1) - is_eos.long()) == 0).long()


# ---- The models: policy log-probs, sampling, the value model ----


def sequence_logits(model, queries, query_mask, responses, response_mask):
    """Logits that predict each response token: the forward pass over prompt + response,
    shifted by one (logits at position t predict token t + 1)."""
    ids = torch.cat([queries, responses], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    return out.logits[:, queries.shape[1] - 1 : -1]


@torch.no_grad()
def generate_responses(policy, tokenizer, prompts, max_new_tokens, temperature, scores=False):
    """Sample one response per prompt at temperature T. No top-k, no top-p: plain ancestral
    sampling, so the recomputed log pi_T(a_t) describe the distribution actually sampled.

    Returns the left-padded prompts and their mask, the responses (padding after the first
    EOS) and their mask, and with scores=True generate()'s own log pi_T(a_t)."""
    device = next(policy.parameters()).device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)  # fmt: skip
    queries, query_mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    # generate() derives position ids from the attention mask, as positions_from_mask does
    out = policy.generate(
        input_ids=queries, attention_mask=query_mask, do_sample=True, temperature=temperature,
        top_k=0, top_p=1.0, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, return_dict_in_generate=True, output_scores=scores,
    )  # fmt: skip
    responses = out.sequences[:, queries.shape[1] :]
    mask = response_mask_after_eos(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(mask == 0, tokenizer.pad_token_id)
    gen_logprobs = None
    if scores:
        # out.scores[t] holds the processed logits z_t / T, so log_softmax gives log pi_T
        logp = F.log_softmax(torch.stack(out.scores, 1).float(), dim=-1)
        gen_logprobs = logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1) * mask
    return queries, query_mask, responses, mask, gen_logprobs


def decode_responses(tokenizer, responses, mask):
    """Response texts without EOS and padding, and whether each one ended with EOS."""
    texts, ended = [], []
    for ids, n in zip(responses.tolist(), mask.sum(1).tolist(), strict=True):
        ids = ids[:n]
        ended.append(bool(ids) and ids[-1] == tokenizer.eos_token_id)
        texts.append(tokenizer.decode(ids[:-1] if ended[-1] else ids))
    return texts, ended


def sample_texts(policy, tokenizer, prompts, args):
    """Response texts sampled from the policy at --temperature, one per prompt, batched."""
    texts = []
    for i in range(0, len(prompts), args.rollout_batch_size):
        r, m = generate_responses(policy, tokenizer, prompts[i : i + args.rollout_batch_size],
                                  args.max_new_tokens, args.temperature)[2:4]  # fmt: skip
        texts += decode_responses(tokenizer, r, m)[0]
    return texts


class ValueModel(nn.Module):
    """V(s_t) for each response token t, read where the policy's logits for token t are: a
    GPT-2 trunk and a scalar head at every token, a network of its own that starts as a copy
    of the reward model.

    Separate rather than a second head on the policy (as in Ouyang et al. 2022 and Huang et
    al. 2024): the value loss cannot then drag the policy's features, and a copy of the RM
    predicts the final score from the first iteration instead of from noise. The price is
    a second forward/backward pass per minibatch."""

    def __init__(self, reward_model):
        super().__init__()
        self.backbone = copy.deepcopy(reward_model.backbone)
        self.head = copy.deepcopy(reward_model.head)

    def forward(self, queries, query_mask, responses, response_mask):
        ids, mask = torch.cat([queries, responses], 1), torch.cat([query_mask, response_mask], 1)
        hidden = self.backbone(ids, attention_mask=mask, position_ids=positions_from_mask(mask))
        values = self.head(hidden.last_hidden_state).squeeze(-1).float()
        return values[:, queries.shape[1] - 1 : -1]


# ---- Rollout and update (stage 3) ----


@torch.no_grad()
def collect_rollout(policy, reference, reward_model, rm_tokenizer, tokenizer, prompts, args):
    """Sample one response per prompt and score it: the tensors PPO needs, and the metrics.
    A prompt repeated k times in `prompts` gets k responses from the same generate() call.

    The RM reads the response re-encoded from its text (the form it was trained on, EOS
    appended), so an RM from reward_model.py scores PPO samples as it scored its data;
    reward_model None means the gold score is the reward (--reward gold, dpo). The KL of a
    response, Σ_t (log π(a_t) − log π_ref(a_t)), is the k1 estimate of KL(π‖π_ref) in nats."""
    q, qm, r, m, _ = generate_responses(policy, tokenizer, prompts, args.max_new_tokens,
                                        args.temperature)  # fmt: skip
    logits = sequence_logits(policy, q, qm, r, m)
    logp = token_logprobs(logits, r, args.temperature) * m
    ref_logp = token_logprobs(sequence_logits(reference, q, qm, r, m), r, args.temperature) * m
    texts, ended = decode_responses(tokenizer, r, m)
    gold = gold_scores(texts)
    if reward_model is None:
        scores = torch.tensor(gold, dtype=torch.float32, device=r.device)
    else:
        scores = score(reward_model, rm_tokenizer, list(prompts), texts).to(r.device)
    roll = {"q": q, "qm": qm, "r": r, "m": m, "logp": logp, "ref_logp": ref_logp}
    roll |= {"scores": scores, "ended": torch.tensor(ended, device=r.device), "texts": texts}
    well_formed = [e and is_well_formed(t) for t, e in zip(texts, ended, strict=True)]
    stats = dict(gold=float(gold.mean()), rm_score=scores.mean().item(),
                 kl=(logp - ref_logp).sum(1).mean().item(),
                 entropy=masked_mean(token_entropy(logits, args.temperature), m).item(),
                 well_formed=float(np.mean(well_formed)),
                 length=m.sum(1).float().mean().item())  # fmt: skip
    return roll, stats


def evaluate_lm_policy(policy, reference, reward_model, rm_tokenizer, tokenizer, prompts, args):
    """Mean rollout metrics over --eval-samples responses (the same prompts at every call)."""
    rng, n = random.Random(args.seed + 1), args.rollout_batch_size
    chosen = [rng.choice(prompts) for _ in range(args.eval_samples)]
    models = (policy, reference, reward_model, rm_tokenizer, tokenizer)
    parts = [collect_rollout(*models, chosen[i : i + n], args)[1] for i in range(0, len(chosen), n)]
    weights = [len(chosen[i : i + n]) for i in range(0, len(chosen), n)]
    return {k: float(np.average([p[k] for p in parts], weights=weights)) for k in parts[0]}


@torch.no_grad()
def algo_advantages(args, roll, value_model, beta, k):
    """Â for every response token of a rollout, by --algo (and, for ppo, the values and the
    returns the value loss needs): PPO's token GAE over KL-shaped rewards, whitened over the
    global batch; RLOO's leave-one-out baseline on a KL-penalised sequence reward; GRPO's
    (Dr. GRPO's) group baseline, the same Â on every token of a response; REINFORCE++'s
    whitened return of PPO's rewards."""
    m = roll["m"]
    # a response cut at --max-new-tokens never ended: a fixed penalty on its score
    scores = roll["scores"] - args.no_eos_penalty * (~roll["ended"]).float()
    if args.algo == "ppo":
        values = value_model(roll["q"], roll["qm"], roll["r"], m) * m
        rewards = kl_shaped_rewards(scores, roll["logp"], roll["ref_logp"], m, beta)
        adv, returns = token_gae(rewards, values, m, args.gamma, args.gae_lambda)
        # whitened over all response tokens of the batch, after the returns are made
        return {"adv": global_masked_whiten(adv, m), "values": values, "returns": returns}
    if args.algo == "reinforce_pp":  # PPO's rewards, no critic: the only new line is Â
        rewards = kl_shaped_rewards(scores, roll["logp"], roll["ref_logp"], m, beta)
        return {"adv": reinforce_pp_advantages(rewards, m, args.gamma)}
    if args.algo == "rloo":
        # R = r_φ(x, y) − β Σ_t (log π − log π_ref): the KL (k1) in the sequence reward
        seq_reward = scores - beta * (roll["logp"] - roll["ref_logp"]).sum(1)
        return {"adv": rloo_advantages(seq_reward, k)[:, None] * m}
    # the KL is a loss term (grpo_policy_loss), not part of the reward
    return {"adv": group_advantages(scores, k, args.algo == "grpo")[:, None] * m}


def minibatch_loss(args, policy, value_model, b, mb, beta, whole):
    """The stage-3 loss of the responses `mb` (indices) of the rollout `b`, and its statistics: the
    clipped surrogate with token-mean aggregation (ppo, rloo, reinforce_pp) or GRPO's loss with its
    k3 KL term weighted by β (grpo, dr_grpo); plus, for ppo, the clipped value loss. No value-loss
    weight: the two networks share no parameters, and Adam's step does not depend on the scale of
    the gradient, so a weight would cancel out. Under torchrun a token mean is scaled by
    token_share (the mean over the global minibatch; × 1 in a plain run); GRPO's per-response
    means and Dr. GRPO's constant already average right: every rank holds as many responses.
    With --gradient-accumulation-steps, `mb` is one micro-batch of the minibatch `whole`, and
    every normaliser is the whole minibatch's: its token count, its responses, its constant."""
    q, qm, r, m, old = b["q"][mb], b["qm"][mb], b["r"][mb], b["m"][mb], b["logp"][mb]
    logp = token_logprobs(sequence_logits(policy, q, qm, r, m), r, args.temperature)
    if args.algo in ("ppo", "rloo", "reinforce_pp"):
        pg_loss, clipfrac, approx_kl = token_policy_loss(logp, old, b["adv"][mb], m, args.clip_coef)
        pg_loss = pg_loss * token_share(m, b["m"][whole].sum())
    else:  # the constant: Dr. GRPO's, the most tokens a minibatch can hold; DAPO's, its tokens
        dapo = args.algo == "grpo" and args.grpo_loss == "token"
        constant = len(whole) * args.max_new_tokens if args.algo == "dr_grpo" else m.sum() * dapo
        pg_loss, clipfrac, approx_kl = grpo_policy_loss(logp, old, b["ref_logp"][mb],
            b["adv"][mb], m, args.clip_coef, beta, constant)  # fmt: skip
        share = token_share(m, b["m"][whole].sum()) if dapo else len(mb) / len(whole)  # as PPO's
        pg_loss = pg_loss * (1 if args.algo == "dr_grpo" else share)
    v_loss = torch.zeros(())  # critic-free: + 0
    if value_model is not None:
        values = value_model(q, qm, r, m)
        v_loss = token_value_loss(values, b["values"][mb], b["returns"][mb], m, args.value_clip)
        v_loss = v_loss * token_share(m, b["m"][whole].sum())
    # max |ρ − 1|; in the first minibatch it must be ~0, else the forward pass does not
    # reproduce the rollout (dropout on, temperature or position ids differ; Huang et al. 2023)
    ratio_dev = (((logp.detach() - old).exp() - 1) * m).abs().max()
    return pg_loss + v_loss, dict(pg_loss=pg_loss, value_loss=v_loss, clipfrac=clipfrac,
                      approx_kl=approx_kl, ratio_dev=ratio_dev)  # fmt: skip


def ppo_update(args, policy, value_model, optimizer, batch, beta=0.0):
    """--ppo-epochs passes of shuffled minibatches over one rollout batch, for every --algo
    (critic-free: value_model None); the mean statistics, and max |ρ − 1| of the first one."""
    stats, names = [], ("pg_loss", "value_loss", "clipfrac", "approx_kl", "ratio_dev_first_mb")
    for _ in range(args.ppo_epochs):  # --minibatch-size is global: each rank holds 1/W of it
        for mb in torch.randperm(len(batch["r"])).split(args.minibatch_size // world()[1]):
            optimizer.zero_grad()
            parts = []
            for micro in mb.tensor_split(min(len(mb), args.gradient_accumulation_steps)):
                with autocast(args):
                    loss, s = minibatch_loss(args, policy, value_model, batch, micro, beta, mb)
                if not torch.isfinite(loss):
                    bad = ("--learning-rate" if stats else  # before any update: rewards overflow
                           "--no-eos-penalty, --init-kl-coef or --loss-kl-coef")  # fmt: skip
                    raise FloatingPointError(f"non-finite {args.algo} loss; lower {bad}")
                loss.backward()
                parts.append([v.item() for v in s.values()])  # in the order of names
            nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            if value_model is not None:
                nn.utils.clip_grad_norm_(value_model.parameters(), args.max_grad_norm)
            optimizer.step()
            p = np.array(parts)  # the micro-batches' losses add up; the rest is averaged
            stats.append([*p[:, :2].sum(0), *p[:, 2:4].mean(0), p[:, 4].max()])
    *means, _ = np.mean(stats, 0).tolist()  # and |ρ − 1| of the first minibatch:
    out = dict(zip(names, [*means, stats[0][-1]], strict=True))
    if value_model is None:
        del out["value_loss"]
    return out


def autocast(args):
    """--bf16: matmuls in bfloat16; weights, gradients, Adam's state and log-softmax stay fp32."""
    device = "cuda" if args.cuda and torch.cuda.is_available() else "cpu"
    return torch.autocast(device, torch.bfloat16, enabled=args.bf16)


def checkpointing(model, args):
    """--gradient-checkpointing: each GPT-2 block recomputes its activations in backward. It
    needs the block in train mode, which differs only by dropout (0 here), and no KV cache."""
    for module in model.modules() if args.gradient_checkpointing else ():
        if isinstance(module, transformers.PreTrainedModel):
            module.activation_checkpointing_enable({"use_reentrant": False})
            module.config.use_cache = False
        elif isinstance(module, transformers.modeling_layers.GradientCheckpointingLayer):
            module.train()
    return model


# ---- The three stages ----


def fit(stage, model, rows, loss_fn, args, writer):
    """Stages 1, 2 (and DPO): Adam over --<stage>-epochs passes of `rows` in global batches,
    minimising loss_fn(model, micro-batch rows, this rank's batch rows) -> (loss, metrics)."""
    lr, epochs, batch_size = (getattr(args, f"{stage}_{x}") for x in ("lr", "epochs", "batch_size"))
    hint = f"nothing of it was saved; lower --{stage}-lr or --max-grad-norm"
    train_model = data_parallel(checkpointing(model, args))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=args.adam_eps)
    total, start = epochs * -(-len(rows) // batch_size), time.time()
    for step, batch in enumerate(my_batches(rows, batch_size, epochs), 1):
        optimizer.zero_grad()
        losses = []  # each micro-batch's share of the batch's loss: they add up to it
        for micro in np.array_split(batch, min(len(batch), args.gradient_accumulation_steps)):
            with autocast(args):  # loss_fn normalises by the whole batch (token_share)
                loss, metrics = loss_fn(train_model, list(micro), batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{stage}] non-finite loss at step {step}; {hint}")
            loss.backward()
            losses.append(loss.item())
        nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        metrics = {"loss": sum(losses), **metrics}  # the metrics of the last micro-batch
        for name, value in metrics.items():
            writer.add_scalar(f"{stage}/{name}", value, step)
        progress(step, total, start, f"{stage} step", **metrics)
    require_finite(model, f"[{stage}] the trained model", hint)


PAIR = ("chosen", "rejected")


def stage_sft(args, policy, tokenizer, demos, writer):
    """Stage 1: cross-entropy on the response tokens (and EOS) of the demonstrations."""
    device, max_length = next(policy.parameters()).device, policy.config.n_positions
    texts = lambda rows: ([x["prompt"] for x in rows], [x["response"] for x in rows])  # noqa: E731

    def loss_fn(model, rows, batch):
        ids, mask, resp = (t.to(device) for t in encode(tokenizer, *texts(rows), max_length))
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
        # × token_share: the token mean over the global batch (ranks and micro-batches)
        n = encode(tokenizer, *texts(batch), max_length)[2][:, 1:].sum()  # the batch's tokens
        return sft_loss(out.logits, ids, resp) * token_share(resp[:, 1:], n), {}

    fit("sft", policy, demos, loss_fn, args, writer)


def stage_reward_model(args, policy, tokenizer, prompts, pairs, writer, rng):
    """Stage 2: a Bradley-Terry RM, its trunk a copy of the SFT model's, trained on `pairs`
    ({prompt, chosen, rejected}), or if there are none on preference_pairs."""
    device = next(policy.parameters()).device
    pairs = pairs or preference_pairs(args, policy, tokenizer, prompts, rng)
    print(f"[rm] {len(pairs)} preference pairs; the trunk starts as the SFT model's")
    reward_model = RewardModel(copy.deepcopy(policy.transformer)).to(device).eval()

    def loss_fn(model, rows, batch):  # chosen and rejected in one forward pass: [0, n), [n, 2n)
        texts = [x["prompt"] for x in rows] * 2, [x[k] for k in PAIR for x in rows]
        ids, mask, _ = encode(tokenizer, *texts, policy.config.n_positions)
        chosen, rejected = model(ids.to(device), mask.to(device)).float().chunk(2)
        # × token_share: the mean over the pairs of the global batch (ranks and micro-batches)
        loss = bradley_terry_loss(chosen, rejected) * token_share(torch.ones(len(rows)), len(batch))
        return loss, {"accuracy": (chosen > rejected).float().mean().item()}

    fit("rm", reward_model, pairs, loss_fn, args, writer)
    return reward_model


def preference_pairs(args, policy, tokenizer, prompts, rng):
    """--rm-pairs pairs of SFT samples for one prompt, ordered by the simulated annotators."""
    batch = [prompts[i] for i in rng.integers(len(prompts), size=args.rm_pairs)]
    # each rank samples its block; every rank then holds the whole global batch
    mine = [batch[i] for i in my_share(len(batch))]
    a = all_gather_list(sample_texts(policy, tokenizer, mine, args))
    b = all_gather_list(sample_texts(policy, tokenizer, mine, args))
    first = annotator_prefers_first(rng, gold_scores(a), gold_scores(b),
                                    args.annotator_temperature)  # fmt: skip
    return [{"prompt": p, "chosen": x if f else y, "rejected": y if f else x}
            for p, x, y, f in zip(batch, a, b, first, strict=True)]  # fmt: skip


def pair_logprobs(model, tokenizer, rows, max_length, device):
    """(log π(y_w|x), log π(y_l|x)) of the pairs `rows`: log-probs (T = 1) summed over the
    response tokens and EOS, padding masked; chosen and rejected in one forward pass."""
    texts = [x["prompt"] for x in rows] * 2, [x[k] for k in PAIR for x in rows]
    ids, mask, resp = (t.to(device) for t in encode(tokenizer, *texts, max_length))
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask))
    return (token_logprobs(out.logits[:, :-1], ids[:, 1:], 1.0) * resp[:, 1:]).sum(1).chunk(2)


def stage_dpo(args, policy, reference, tokenizer, pairs, writer):
    """Stage 3 of --algo dpo: dpo_loss over the preference pairs, π_ref the frozen SFT model."""
    device, n = next(policy.parameters()).device, policy.config.n_positions

    def loss_fn(model, rows, batch):
        with torch.no_grad():
            ref = pair_logprobs(reference, tokenizer, rows, n, device)
        loss, margin = dpo_loss(*pair_logprobs(model, tokenizer, rows, n, device), *ref,
                                args.dpo_beta)  # fmt: skip
        # × token_share: the mean over the pairs of the global batch (ranks and micro-batches)
        return loss * token_share(torch.ones(len(rows)), len(batch)), {"margin": margin.item()}

    fit("dpo", policy, pairs, loss_fn, args, writer)


def normalize_reward_model(args, policy, tokenizer, reward_model, rm_tokenizer, prompts, rng):
    """r ← (r − μ) / σ in place, μ and σ those of --eval-samples SFT samples (of all ranks), so
    that the KL coefficient and the value clip are on a known scale (Ziegler et al. 2019)."""
    reference_prompts = [prompts[i] for i in rng.integers(len(prompts), size=args.eval_samples)]
    reference_prompts = [reference_prompts[i] for i in my_share(len(reference_prompts))]
    sft_texts = sample_texts(policy, tokenizer, reference_prompts, args)
    try:
        scores = score(reward_model, rm_tokenizer, reference_prompts, sft_texts)  # on the CPU
        mean, std = reward_model.normalize_(torch.cat(all_gather_list([scores])))
    except FloatingPointError as e:  # name the flag at fault
        hint = "check --reward-model-path" if args.reward_model_path else "lower --rm-lr"
        raise FloatingPointError(f"[rm] {e}; {hint} or raise --eval-samples") from None
    print(f"[rm] normalised on {args.eval_samples} SFT samples (mean {mean:.3f}, std {std:.3f})")


def stage_rl(args, models, value_model, prompts, rng, writer, out, last):
    """Stage 3: --ppo-iterations of rollout → advantages (by --algo) → update → log, from the SFT
    policy, π_ref frozen; under torchrun the controller and logs see the global batch's means.
    last["policy"] keeps the weights of the last complete iteration. Returns the final β."""
    policy, rank, world_size = models[0], *world()
    trained = [*policy.parameters(), *(value_model.parameters() if value_model else ())]
    optimizer = torch.optim.Adam(trained, lr=args.learning_rate, eps=args.adam_eps)
    # under torchrun the update's forward passes go through DDP; rollouts and saving use the
    # plain modules. The wrappers are freed on return, while every rank is in the group.
    train_policy = data_parallel(checkpointing(policy, args))
    train_value = data_parallel(value_model and checkpointing(value_model, args))
    k = responses_per_prompt(args)
    # β weighs a KL penalty in the reward (ppo, rloo, reinforce_pp) or a KL term in the loss
    # (grpo, dr_grpo): two scales, two starting values. The controller adapts β; RLOO's stays
    # fixed, as in its paper (adapted, it fell into the RM's blind spots: issue 31, the docs)
    beta = args.loss_kl_coef if args.algo in ("grpo", "dr_grpo") else args.init_kl_coef
    target = 0.0 if (args.kl_control or args.algo) in ("fixed", "rloo") else args.kl_target
    start = time.time()
    csv_path = os.path.join(out, f"{args.algo}_metrics.csv") if rank == 0 else os.devnull
    with open(csv_path, "w") as csv:
        for it in range(1, args.ppo_iterations + 1):
            # k consecutive copies of each prompt: its group of k responses
            chosen = rng.integers(len(prompts), size=args.rollout_batch_size // k)
            chosen = chosen[my_share(len(chosen))]  # this rank's groups (all of them, alone)
            batch_prompts = [prompts[i] for i in np.repeat(chosen, k)]
            with autocast(args):  # the same precision as the update's: ρ = 1 at its start
                roll, stats = collect_rollout(*models, batch_prompts, args)
                roll |= algo_advantages(args, roll, value_model, beta, k)
            try:
                stats |= ppo_update(args, train_policy, train_value, optimizer, roll, beta)
                for net in (policy, value_model or policy):  # the last step's update too
                    require_finite(net, "the updated model", "lower --learning-rate")
            except FloatingPointError as e:
                raise FloatingPointError(f"{e} ({args.algo} iteration {it})") from None
            last["policy"] = {name: v.clone() for name, v in policy.state_dict().items()}
            if world_size > 1:  # the controller and the logs see the global batch's means
                values = all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64))
                stats = dict(zip(stats, (values / world_size).tolist(), strict=True))
            stats["beta"], n = beta, len(roll["r"]) * world_size  # n: the global batch
            beta = adaptive_kl_coef(beta, stats["kl"], target, n, args.kl_horizon)
            for key, v in stats.items():
                writer.add_scalar(f"{args.algo}/{key}", v, it)
            csv.write(("iteration," + ",".join(stats) + "\n") * (it == 1))  # the header first
            csv.write(f"{it}," + ",".join(f"{v:.6g}" for v in stats.values()) + "\n")
            csv.flush()
            progress(it, args.ppo_iterations, start, f"{args.algo} iteration",
                     reward=stats["rm_score"], gold=stats["gold"], kl=stats["kl"])  # fmt: skip
            if args.sample_every and (it % args.sample_every == 0 or it == 1):
                rows = zip(batch_prompts, roll["texts"], roll["scores"].tolist(), strict=True)
                for p, t, s in list(rows)[:3]:
                    print(f"    {p + t!r}  gold {gold_scores([t])[0]:+.2f}  {args.reward} {s:+.2f}")
    return beta


def responses_per_prompt(args):
    """k of --samples-per-prompt; 0 = automatic: 4 for the group baselines, else 1."""
    return args.samples_per_prompt or (4 if args.algo in ("rloo", "grpo", "dr_grpo") else 1)


def train(args):
    """SFT → RM → stage 3 (--algo) → the evaluation of the SFT and the final policy. Each model is
    saved when complete; stage 3's also, as of its last iteration, on an interrupt or NaN."""
    reward_model = rm_tokenizer = None  # loaded before the seeds: its head's init draws
    if args.reward == "rm" and args.reward_model_path:
        reward_model, rm_tokenizer = RewardModel.load(args.reward_model_path)
    device, rank, world_size, rng = start_run(args)
    task = os.path.basename(args.sft_data) if args.sft_data else "movie-reviews"
    out = args.output_dir or f"runs/{task}__rlhf_ppo_gpt2__{args.seed}__{int(time.time())}"
    t_start = time.time()
    # Every input is read and checked before anything is written (not after SFT).
    demos = (read_jsonl("--sft-data", args.sft_data, ["prompt", "response"], ["prompt"])
             if args.sft_data else builtin_demonstrations(rng, args.sft_demos))  # fmt: skip
    pairs = []
    if args.preference_data and not args.reward_model_path:
        pairs = read_jsonl("--preference-data", args.preference_data, ("prompt", *PAIR), (), PAIR)
    policy, tokenizer = load_gpt2(transformers.GPT2LMHeadModel, args.model_name)
    policy = policy.to(device).eval()
    prompts = sorted({d["prompt"] for d in demos})
    check_inputs(args, policy.config, tokenizer, prompts, rm_tokenizer)
    writer = open_output_dir(args, out)
    print(f"[sft] {len(demos)} demonstrations, {args.model_name} on {device}; files in {out}")

    # Stage 1: SFT. Every model stays in eval mode for the whole run: GPT-2's only train-mode
    # behaviour is dropout (also zeroed in the config), which would make ρ ≠ 1 at the start.
    stage_sft(args, policy, tokenizer, demos, writer)
    save_pretrained_atomic(f"{out}/sft", policy, tokenizer)
    t_sft = time.time()
    # Stage 2: RM, normalised on SFT samples; none for --reward gold (a checkable reward).
    rm_tokenizer = rm_tokenizer or tokenizer
    if args.algo == "dpo":  # DPO's implicit reward replaces the RM; evaluated by the gold score
        pairs = pairs or preference_pairs(args, policy, tokenizer, prompts, rng)
        print(f"[rm] {len(pairs)} preference pairs for DPO; no reward model")
    elif args.reward == "gold":
        print("[rm] --reward gold: no reward model; stage 3 is rewarded with the gold score")
    elif reward_model is None:
        reward_model = stage_reward_model(args, policy, tokenizer, prompts, pairs, writer, rng)
    if reward_model is not None:
        reward_model = reward_model.to(device).eval().requires_grad_(False)
        normalize_reward_model(args, policy, tokenizer, reward_model, rm_tokenizer, prompts, rng)
        if rank == 0:
            with signals_held():  # Ctrl-C or SIGTERM waits until the model is complete
                reward_model.save(f"{out}/reward_model", rm_tokenizer)
    t_rm = time.time()
    # Stage 3. π_ref is a frozen copy of the SFT policy. PPO's V is a copy of the RM (of the
    # SFT trunk with a fresh head under --reward gold); the critic-free algorithms have none.
    reference = copy.deepcopy(policy).requires_grad_(False)
    value_model = None
    if args.algo == "ppo":
        value_model = ValueModel(reward_model or RewardModel(policy.transformer))
        value_model = value_model.to(device).requires_grad_(True)
    models = (policy, reference, reward_model, rm_tokenizer, tokenizer)
    sft_eval = evaluate_lm_policy(*models, prompts, args) if rank == 0 else {}
    print(f"[{args.algo}] SFT policy:   " + "  ".join(f"{k} {v:.3f}" for k, v in sft_eval.items()))
    last = {}  # the policy of the last complete iteration
    try:
        t_loop = time.time()
        if args.algo == "dpo":
            stage_dpo(args, policy, reference, tokenizer, pairs, writer)
            last["policy"], beta = policy.state_dict(), args.dpo_beta
        else:
            beta = stage_rl(args, models, value_model, prompts, rng, writer, out, last)
        t_loop = time.time() - t_loop  # the rollout-and-update loop alone: no evaluation
    finally:  # on success, a non-finite loss, Ctrl-C and SIGTERM alike
        if last:
            policy.load_state_dict(last.pop("policy"))
            save_pretrained_atomic(f"{out}/policy", policy, tokenizer)
        writer.close()
    t_ppo = time.time()
    if world_size > 1:
        # DDP's reducers hold the process group: leave together (else gloo's teardown hung)
        dist.barrier()
        dist.destroy_process_group()  # the other ranks are done; rank 0 evaluates alone
    if rank > 0:
        return {}
    final = evaluate_lm_policy(*models, prompts, args)
    print(f"[{args.algo}] final policy: " + "  ".join(f"{k} {v:.3f}" for k, v in final.items()))
    # summary.json: both evaluations, β, the seconds; the JSON line: what a reader needs
    full = dict(algo=f"rlhf_{args.algo}", model_name=args.model_name, seed=args.seed,
                reward=args.reward, samples_per_prompt=responses_per_prompt(args),
                **{f"sft_{k}": v for k, v in sft_eval.items()},
                **{f"final_{k}": v for k, v in final.items()}, kl_target=args.kl_target,
                final_beta=beta, sft_time_s=t_sft - t_start, rm_time_s=t_rm - t_sft,
                ppo_time_s=t_ppo - t_rm, stage3_s=t_loop, iteration_s=t_loop / max(1, args.
                ppo_iterations), wall_time_s=time.time() - t_start, output_dir=out)  # fmt: skip
    with open(f"{out}/summary.json", "w") as f:
        json.dump(full, f, indent=1)
    return {k: full[k] for k in ("algo", "model_name", "seed", "reward", "sft_gold", "final_gold",
            "sft_well_formed", "final_well_formed", "final_kl", "kl_target", "wall_time_s",
            "output_dir")}  # fmt: skip


# ---- Data parallelism (torchrun): none of this runs in a plain `python rlhf_ppo_gpt2.py` ----


def world():
    """(rank, world size) of this process: (0, 1) unless torchrun started a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce_sum(x):
    """Σ_ranks x, in place, for a tensor; x itself in a plain run."""
    if world()[1] > 1:
        dist.all_reduce(x)
    return x


def all_gather_list(items):
    """The ranks' lists concatenated in rank order; the list itself in a plain run."""
    if world()[1] == 1:
        return items
    parts = [None] * world()[1]
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def my_share(n):
    """Indices of this rank's contiguous block of range(n): all of it in a plain run."""
    rank, world_size = world()
    return np.array_split(np.arange(n), world_size)[rank]


def global_masked_whiten(x, mask, eps=1e-8):
    """masked_whiten with μ = Σ_r Σ x m / Σ_r Σ m, var = Σ_r Σ (x - μ)² m / (Σ_r Σ m - 1) over
    every rank's unmasked entries; one rank: masked_whiten itself, to the bit."""
    if world()[1] == 1:
        return masked_whiten(x, mask, eps)
    sums = all_reduce_sum(torch.stack([(x * mask).sum(), mask.sum()]).double())
    mu = (sums[0] / sums[1]).to(x.dtype)
    var = all_reduce_sum(((x - mu) ** 2 * mask).sum().double()) / (sums[1] - 1)
    return (x - mu) * torch.rsqrt(var.to(x.dtype) + eps) * mask


def token_share(mask, total=None):
    """W · n / N: n the tokens (ones of mask) of a micro-batch, N the sum over ranks of `total`,
    this rank's minibatch (default n). DDP averages the ranks' gradients, accumulation adds the
    micro-batches': a token mean × this has the gradient of the global minibatch's token mean."""
    n = mask.sum().double()
    total = n.clone() if total is None else torch.as_tensor(total, dtype=torch.float64)
    return (world()[1] * n / all_reduce_sum(total.clone())).float()


def my_batches(rows, batch_size, epochs):
    """This rank's rows (every W-th) of each global batch, `epochs` passes in rank 0's orders."""
    rank, world_size = world()
    for _ in range(epochs):
        perm = torch.randperm(len(rows))
        if world_size > 1:
            dist.broadcast(perm, 0)
        for idx in perm.split(batch_size):
            yield [rows[j] for j in idx[rank::world_size].tolist()]


def data_parallel(model):
    """The model in DDP under torchrun (generation, scoring, saving use the bare model)."""
    if model is None or world()[1] == 1:
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, ids)


# ---- shared with reward_model.py (tests/test_shared_code.py checks the copies are identical) ----
# The built-in task: synthetic movie reviews. A prompt opens a review ("The plot"); a response
# continues it from this grammar (every response starts with a space, GPT-2 style, and ends
# with a period; tokenisation appends EOS):
#     response := CLAUSE [" " CONJUNCTION " it" CLAUSE] "."
#     CLAUSE   := " " VERB [" not"] [" " ADVERB] " " ADJECTIVE
# e.g. "The plot" + " was not very clever but it felt fun." Adjectives are positive, neutral or
# negative at two strengths; adverbs are VADER's intensifiers and dampeners; "not" flips
# polarity and "but" shifts weight to the second clause, so the gold score is not a bag of
# words. " it" and a verb keep the clauses apart: VADER lets a negation or an adverb act on
# the next three words, which would otherwise reach across "but" ("not bad but awful" would
# score as positive). The word lists are balanced so that the demonstrations average a gold score
# near 0: an SFT policy starts neutral.
PROMPTS = (
    "The movie", "This film", "The plot", "The acting", "The ending", "The soundtrack",
    "The dialogue", "The cast", "The story", "The screenplay", "The sequel", "The first hour",
    "Overall, the film", "Honestly, the movie", "The director's new film", "The final scene",
)  # fmt: skip
VERBS = ("is", "was", "felt", "seemed")
ADVERBS = ("very", "really", "extremely", "so", "quite", "somewhat", "slightly", "kind of")
POSITIVE = (
    "great", "superb", "brilliant", "wonderful", "excellent", "amazing",  # strong
    "good", "nice", "fun", "enjoyable", "clever", "fine",  # mild
)  # fmt: skip
NEUTRAL = ("long", "short", "slow", "quiet", "loud", "simple", "familiar", "predictable")
NEGATIVE = (
    "bad", "horrible", "stupid", "awful", "terrible", "disappointing",  # strong
    "boring", "dull", "weak", "annoying", "painful", "strange",  # mild
)  # fmt: skip
CONJUNCTIONS = ("and", "but")
_ADJECTIVES = POSITIVE + NEUTRAL + NEGATIVE
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end of text; also the padding token (masks say which)


def sample_responses(rng, n):
    """n responses from the grammar above, a pure function of the numpy Generator `rng`.

    Each clause: a uniform verb, "not" with p = 0.2, an adverb with p = 0.5, a uniform
    adjective; a second clause with p = 0.5.
    """
    verb = rng.integers(len(VERBS), size=(n, 2))
    neg = rng.random((n, 2)) < 0.2
    has_adv = rng.random((n, 2)) < 0.5
    adv = rng.integers(len(ADVERBS), size=(n, 2))
    adj = rng.integers(len(_ADJECTIVES), size=(n, 2))
    two = rng.random(n) < 0.5
    conj = rng.integers(len(CONJUNCTIONS), size=n)

    def clause(i, k):
        verb_not = VERBS[verb[i, k]] + (" not" if neg[i, k] else "")
        adverb = " " + ADVERBS[adv[i, k]] if has_adv[i, k] else ""
        return f" {verb_not}{adverb} {_ADJECTIVES[adj[i, k]]}"

    return [
        clause(i, 0) + (" " + CONJUNCTIONS[conj[i]] + " it" + clause(i, 1) if two[i] else "") + "."
        for i in range(n)
    ]


def builtin_demonstrations(rng, n):
    """n demonstrations {"prompt", "response"}: a uniform prompt and a grammar response."""
    prompts = rng.integers(len(PROMPTS), size=n)
    return [{"prompt": PROMPTS[p], "response": r}
            for p, r in zip(prompts, sample_responses(rng, n), strict=True)]  # fmt: skip


@functools.cache
def vader():
    """The VADER analyzer (Hutto & Gilbert 2014), built once, on first use; its lexicon ships
    inside the vaderSentiment package, so nothing is downloaded."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def gold_scores(responses):
    """Gold score g(y) = VADER compound sentiment of the response alone, in [-1, 1]."""
    return np.array([vader().polarity_scores(r)["compound"] for r in responses])


def annotator_prefers_first(rng, gold_first, gold_second, temperature):
    """Simulated annotators, a Bradley-Terry model of the gold scores:

    P(y1 ≻ y2) = σ((g1 - g2) / τ);   τ = 0: the noiseless gold order (ties: a coin flip).
    """
    diff = np.asarray(gold_first) - np.asarray(gold_second)
    u = rng.random(len(diff))
    if temperature == 0:
        return np.where(diff == 0, u < 0.5, diff > 0)
    return u < 1 / (1 + np.exp(-diff / temperature))


def bradley_terry_loss(r_chosen, r_rejected):
    """Bradley-Terry negative log-likelihood of the human choices (Christiano et al. 2017):

    L = -mean log σ(r(x, y_c) - r(x, y_r))
    """
    return -F.logsigmoid(r_chosen - r_rejected).mean()  # stable where log(sigmoid(.)) underflows


def encode(tokenizer, prompts, responses, max_length, padding_side="right"):
    """Token ids of prompt + response + EOS, padded to a batch, with the attention mask and the
    mask of response tokens (EOS included). A sequence longer than `max_length` loses the
    start of its prompt."""
    p_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(list(responses), add_special_tokens=False)["input_ids"]
    seqs, n_resp = [], []
    for p, r in zip(p_ids, r_ids, strict=True):
        seq = (p + r + [tokenizer.eos_token_id])[-max_length:]
        seqs.append(seq)
        n_resp.append(min(len(r) + 1, len(seq)))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (seq, k) in enumerate(zip(seqs, n_resp, strict=True)):
        start = width - len(seq) if padding_side == "left" else 0
        ids[i, start : start + len(seq)] = torch.tensor(seq)
        mask[i, start : start + len(seq)] = 1
        resp[i, start + len(seq) - k : start + len(seq)] = 1
    return ids, mask, resp


class RewardModel(nn.Module):
    """r(x, y): a GPT-2 backbone and a linear head read at the last real (non-padding) token."""

    def __init__(self, backbone):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.n_embd, 1)
        nn.init.normal_(self.head.weight, std=1 / (backbone.config.n_embd + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask):
        # Positions count real tokens only, so left padding does not shift them (transformers
        # does not derive position ids from the mask).
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        positions = torch.arange(attention_mask.shape[1], device=hidden.device)
        last = (attention_mask * positions).argmax(-1)  # where mask is last 1: any padding side
        return self.head(hidden[torch.arange(len(last), device=hidden.device), last]).squeeze(-1)

    @torch.no_grad()
    def normalize_(self, reference_rewards):
        """Fold r ← (r - μ)/σ into the head, with μ, σ the mean and (sample) std of the rewards
        of reference responses: they then score mean 0, std 1 (Ziegler et al. 2019)."""
        mean, std = reference_rewards.mean(), reference_rewards.std()
        if not (torch.isfinite(mean) and std > 0 and torch.isfinite(std)):
            raise FloatingPointError(
                f"the reward model scores its {len(reference_rewards)} reference responses with "
                f"mean {mean:.3g}, std {std:.3g}: that cannot be normalised to mean 0, std 1"
            )
        # r' = (w·h + b - μ)/σ = (w/σ)·h + (b - μ)/σ
        self.head.weight.div_(std)
        self.head.bias.sub_(mean).div_(std)
        return mean.item(), std.item()

    def save(self, path, tokenizer):
        """backbone.save_pretrained + the tokenizer + the head, written atomically."""

        def write(tmp):
            self.backbone.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            torch.save(self.head.state_dict(), os.path.join(tmp, "reward_head.pt"))

        save_dir_atomic(path, write)

    @classmethod
    def load(cls, path):
        """(reward model, tokenizer) saved by `save`, on the CPU, dropout off. A missing,
        damaged or non-finite model is an error naming `path`."""
        if not os.path.isfile(os.path.join(path, "reward_head.pt")):
            raise OSError(f"{path}: no reward model here (reward_head.pt is missing)")
        try:
            model = cls(GPT2Model.from_pretrained(path, local_files_only=True))
            model.head.load_state_dict(
                torch.load(os.path.join(path, "reward_head.pt"), map_location="cpu")
            )
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as e:  # truncated or foreign files: the loaders raise many kinds
            raise OSError(f"{path}: cannot load the reward model ({brief(e)})") from None
        require_finite(model, f"the reward model in {path}", "it was saved from a diverged run")
        return model.eval(), tokenizer


@torch.no_grad()
def score(model, tokenizer, prompts, responses, batch_size=256):
    """Rewards r(x, y) of many (prompt, response) pairs, in batches, as a CPU tensor."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch_size):
        ids, mask, _ = encode(
            tokenizer, prompts[i : i + batch_size], responses[i : i + batch_size],
            model.backbone.config.n_positions,
        )  # fmt: skip
        out.append(model(ids.to(device), mask.to(device)).float().cpu())
    return torch.cat(out)


def train_tiny_tokenizer():
    """A byte-level BPE (GPT-2's scheme) trained on the built-in task's words, so that each
    word is one token; deterministic, and any other text still encodes, byte by byte."""
    corpus = list(PROMPTS) + [" " + w for w in VERBS + ADVERBS + _ADJECTIVES + CONJUNCTIONS]
    corpus += [" not", "."]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=[EOS_TOKEN], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    kw = dict(eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, clean_up_tokenization_spaces=False)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **kw)


def load_gpt2(model_cls, model_name):
    """(model, tokenizer): `model_cls` (GPT2Model or GPT2LMHeadModel) with dropout off.

    'tiny': a small random GPT-2 (initialised from torch's global RNG) and a locally trained
    tokenizer. Otherwise a local directory or a hub name such as 'gpt2', whose weights are
    downloaded once into the Hugging Face cache (HF_HUB_OFFLINE=1: the cache alone).
    """
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    if model_name == "tiny":
        tokenizer = train_tiny_tokenizer()
        config = GPT2Config(
            vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=2,
            bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
            **no_dropout,
        )  # fmt: skip
        return model_cls(config).eval(), tokenizer
    try:
        model = model_cls.from_pretrained(model_name, **no_dropout)
        tokenizer = AutoTokenizer.from_pretrained(model_name)
    except Exception as e:  # missing, truncated or foreign files: the loaders raise many kinds
        raise OSError(f"cannot load --model-name {model_name}; use tiny (no download), a hub "
                      f"name or a directory with a saved GPT-2 ({brief(e)})") from None  # fmt: skip
    require_finite(model, f"--model-name {model_name}", "it was saved from a diverged run")
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; masks mark padding
    tokenizer.clean_up_tokenization_spaces = False
    return model.eval(), tokenizer


# ---- end of shared block ----

_CLAUSE = (
    rf" (?:{'|'.join(VERBS)})(?: not)?(?: (?:{'|'.join(ADVERBS)}))? (?:{'|'.join(_ADJECTIVES)})"
)
WELL_FORMED = re.compile(rf"{_CLAUSE}(?: (?:{'|'.join(CONJUNCTIONS)}) it{_CLAUSE})?\.")


def is_well_formed(response):
    """True iff the grammar can produce `response` exactly (no EOS, leading space included)."""
    return WELL_FORMED.fullmatch(response) is not None


# ==== Plumbing: command line, files, progress. The algorithm ends above. ====
# Each piece is the same text in every script that has it (tests/test_shared_code.py).

RULES = {None: lambda v: True, "> 0": lambda v: v > 0, ">= 0": lambda v: v >= 0,
         "in [0, 1]": lambda v: 0 <= v <= 1, "in [0, 2^32)": lambda v: 0 <= v < 2**32,
         "finite": lambda v: True, "in [-20, 20]": lambda v: -20 <= v <= 20}  # fmt: skip


def parse_args(argv=None):
    """Args from the command line; a value that breaks its flag's rule is a ValueError."""
    parser = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter,
                                     description=__doc__)  # fmt: skip
    for f in dataclasses.fields(Args):
        is_bool, shown = type(f.default) is bool, f" (default: {f.default})" * (f.default != "")
        parser.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=f.metadata[
            "help"] + shown, type=None if is_bool else type(f.default),
            action=argparse.BooleanOptionalAction if is_bool else None)  # fmt: skip
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    args = Args(**vars(parser.parse_args(argv)))
    for f in dataclasses.fields(args):
        v, rule = getattr(args, f.name), f.metadata["rule"]
        ok = v in rule if isinstance(rule, tuple) else RULES[rule](v)
        require(ok and (not isinstance(v, float) or np.isfinite(v)),
                f"--{f.name.replace('_', '-')} must be {rule or 'finite'}, not {v!r}")  # fmt: skip
    return args


def require(ok, message):
    if not ok:
        raise ValueError(message)


def check_flags_together(args, world_size):
    """The rules that tie flags together (each flag's own is in Args); batch sizes are global."""
    k = responses_per_prompt(args)
    require(args.algo not in ("rloo", "grpo", "dr_grpo") or k >= 2,
            f"--algo {args.algo} needs --samples-per-prompt >= 2 (a group baseline)")  # fmt: skip
    require(args.rollout_batch_size % k == 0,
            f"--rollout-batch-size must be a multiple of --samples-per-prompt {k}")  # fmt: skip
    require(args.algo not in ("ppo", "reinforce_pp") or args.rollout_batch_size >= 2, f"--algo "
            f"{args.algo} whitens Â over a batch: it needs --rollout-batch-size >= 2")  # fmt: skip
    require(args.minibatch_size <= args.rollout_batch_size, "--minibatch-size must be <= "
            "--rollout-batch-size")  # fmt: skip
    require(args.eval_samples >= 2, "--eval-samples must be >= 2 (for the RM's normaliser)")
    for name, unit in [("rollout_batch_size", k), ("minibatch_size", 1), ("sft_batch_size", 1),
                       ("rm_batch_size", 1), ("dpo_batch_size", 1)]:  # fmt: skip
        what = f"{world_size} ranks" + (f" x {k} samples per prompt" if unit > 1 else "")
        require(getattr(args, name) % (unit * world_size) == 0,
                f"--{name.replace('_', '-')} {getattr(args, name)} does not divide across "
                f"{what}; it is a global batch size")  # fmt: skip


def start_run(args):
    """Flags checked, seeds, torchrun's process group; (device, rank, world size, Generator)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        check_flags_together(args, world_size)
    except ValueError:
        if int(os.environ.get("RANK", "0")) > 0:
            sys.exit(1)
        raise
    cuda = args.cuda and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if world_size > 1 and not dist.is_initialized():
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = world()
    if rank > 0:
        sys.stdout = open(os.devnull, "w")
    # numpy's draws (prompts, annotators: the Generator returned) are the same on every rank;
    # torch's are not: each rank samples other responses (rank 0 draws what one process would)
    torch.manual_seed(args.seed + 1000 * rank)
    # a tiny GPT-2's matmuls are too small to split: 1 thread was 16x faster than 2 here (busy)
    torch.set_num_threads(args.threads or (1 if args.model_name == "tiny" else
                                           torch.get_num_threads()))  # fmt: skip
    hf_logging.disable_progress_bar()  # save_pretrained's tqdm bar would interleave with ours
    return device, rank, world_size, np.random.default_rng(args.seed)


# TensorBoard's SummaryWriter for the ranks that write nothing (all but rank 0)
NullWriter = type("NullWriter", (), {"__getattr__": lambda *_: lambda *args, **kwargs: None})


def check_inputs(args, config, tokenizer, prompts, rm_tokenizer):
    """The RM's tokenizer is the policy's, and every prompt + --max-new-tokens fits, uncut."""
    require(rm_tokenizer is None or rm_tokenizer.get_vocab() == tokenizer.get_vocab(),
            f"--reward-model-path {args.reward_model_path}: the RM has another tokenizer than "
            f"--model-name {args.model_name}")  # fmt: skip
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    n, i = config.n_positions, int(np.argmax(lengths))
    require(lengths[i] + args.max_new_tokens <= n, f"{args.sft_data or 'a built-in prompt'}: "
            f"{prompts[i][:40]!r} is {lengths[i]} tokens: with --max-new-tokens "
            f"{args.max_new_tokens}, more than the {n} positions of {args.model_name}")  # fmt: skip


def open_output_dir(args, out):
    """TensorBoard in --output-dir (rank 0), holding no earlier run (--overwrite: deleted)."""
    patterns = ("sft", "reward_model", "policy", "summary.json", "*_metrics.csv", "events.out.*")
    old = sorted(p for pat in patterns for p in glob.glob(os.path.join(glob.escape(out), pat)))
    require(args.overwrite or not old, f"--output-dir {out} holds an earlier run "
            f"({', '.join(map(os.path.basename, old))}); pass --overwrite")  # fmt: skip
    if world()[1] > 1:
        dist.barrier()  # every rank has checked --output-dir before rank 0 writes to it
    if world()[0] > 0:
        return NullWriter()
    try:
        for p in old:
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OSError(f"cannot write to --output-dir {out}: {e.strerror or e}") from None
    writer = SummaryWriter(out, flush_secs=2)  # on Ctrl-C close() waits a flush, not 120 s
    writer.add_text("args", json.dumps(vars(args), indent=1))
    return writer


def progress(step, total, start, label="step", **metrics):
    """The progress line, printed when `step` of `total` enters a new tenth (about 10 times,
    the last at 100%): percent, step, `metrics`, elapsed seconds and the ETA."""
    if step <= 0 or 10 * step // total == 10 * (step - 1) // total:
        return
    seconds, frac = time.time() - start, step / total
    shown = "".join(f"  {k} {v:.4g}" for k, v in metrics.items())
    print(f"[{100 * frac:3.0f}%] {label} {step}{shown}  elapsed {seconds:.0f}s  "
          f"ETA {seconds / frac - seconds:.0f}s", flush=True)  # fmt: skip


def read_jsonl(flag, path, keys, nonempty=(), pair=()):
    """The rows of the UTF-8 JSONL file `path`, given by `flag`: each a dict of strings for
    `keys`; the `nonempty` keys must not be empty, and the two `pair` keys are two responses,
    which must be non-empty and differ (an identical pair states no preference). A file that
    cannot be read, holds no row, or has a bad line (not UTF-8, not JSON, a missing key, a lone
    UTF-16 surrogate, which no tokenizer accepts) is a ValueError naming flag, file and line."""
    try:
        with open(path, "rb") as f:
            lines = f.readlines()
    except OSError as e:
        raise ValueError(f"cannot read {flag} {path}: {e.strerror or brief(e)}") from None
    rows = []
    for line_no, raw in enumerate(lines, 1):
        where = f"{flag} {path}:{line_no}"
        if not raw.strip():
            continue
        try:  # a UnicodeDecodeError, a JSONDecodeError and a 5000-digit int are ValueErrors
            row = json.loads(raw.decode("utf-8-sig" if line_no == 1 else "utf-8"))
        except (ValueError, RecursionError) as e:
            raise ValueError(f"{where}: not a line of UTF-8 JSON ({brief(e)})") from None
        missing = [k for k in keys if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        require(not missing, f"{where}: needs string fields {', '.join(missing)}")
        bad = [k for k in keys if re.search("[\ud800-\udfff]", row[k])]
        require(not bad, f"{where}: lone UTF-16 surrogate in {', '.join(bad)}")
        empty = [k for k in (*nonempty, *pair) if not row[k]]
        require(not empty, f"{where}: empty {', '.join(empty)}")
        require(not pair or row[pair[0]] != row[pair[1]],
                f"{where}: {' and '.join(pair)} are the same text: no preference")  # fmt: skip
        rows.append({k: row[k] for k in keys})
    require(rows, f"{flag} {path}: no examples; expected one JSON object per line with {keys}")
    return rows


def require_finite(model, what, hint):
    """FloatingPointError if a weight of `model` is NaN or infinite: such a model must be
    neither saved nor sampled from. The message names `what` and the likely cause, `hint`."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise FloatingPointError(f"{what} has non-finite weights; {hint}")


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait while final files are written, then act (KeyboardInterrupt)."""
    caught, signals = [], (signal.SIGINT, signal.SIGTERM)
    held = [signal.signal(s, lambda *_: caught.append(1)) for s in signals]
    try:
        yield
    finally:
        for s, handler in zip(signals, held, strict=True):
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def replace_dir(tmp, path):
    """Move the finished directory `tmp` to `path`. A directory cannot be renamed over a full
    one, so the old one steps aside first; a crash leaves it, whole, at path + '.old'."""
    if os.path.exists(path):
        shutil.rmtree(path + ".old", ignore_errors=True)
        os.replace(path, path + ".old")
    os.replace(tmp, path)
    shutil.rmtree(path + ".old", ignore_errors=True)


def save_dir_atomic(path, write):
    """write(path + ".tmp"), a directory, then replace_dir it to `path`: a reader finds the old
    directory or the complete new one. A failed or interrupted write removes the temporary
    directory and keeps the old one; a failure is an OSError that names `path`."""
    path = path.rstrip("/")
    shutil.rmtree(path + ".tmp", ignore_errors=True)
    try:
        write(path + ".tmp")
        replace_dir(path + ".tmp", path)
    except BaseException as e:
        shutil.rmtree(path + ".tmp", ignore_errors=True)
        if isinstance(e, Exception):  # ENOSPC comes as OSError, RuntimeError or SafetensorError
            raise OSError(f"cannot write {path}: {brief(e)}") from None
        raise


def save_pretrained_atomic(path, *parts):
    """save_pretrained of each part into one directory, atomically (save_dir_atomic), rank 0."""
    if world()[0] == 0:
        with signals_held():
            save_dir_atomic(path, lambda tmp: [part.save_pretrained(tmp) for part in parts])


def brief(e):
    return " ".join(str(e).split())[:200]  # an exception's message, on one short line


def main(argv=None):
    """train(), then its rounded summary; any failure is one `error:` line, exit non-zero."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError, MemoryError, RuntimeError) as e:
        sys.exit(f"error: {brief(e)}")
    except KeyboardInterrupt:
        print("error: interrupted; files saved before the interrupt are kept", file=sys.stderr)
        sys.exit(130)
    rounded = lambda v: round(float(v), 3) if np.isfinite(v) else None  # noqa: E731 (NaN: no JSON)
    print(json.dumps({k: rounded(v) if isinstance(v, float) else v for k, v in summary.items()}))


if __name__ == "__main__":
    try:
        main()
    finally:  # the files are whole: a signal while Python exits must not print a traceback
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
