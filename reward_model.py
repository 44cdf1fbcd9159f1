"""Reward model for RLHF (stage 2), plus a terminal tool to collect real human preferences.

A GPT-2 backbone with a scalar head is trained on preference pairs with the Bradley-Terry
loss -log σ(r(x, y_chosen) - r(x, y_rejected)) (Christiano et al. 2017,
https://arxiv.org/abs/1706.03741; Ziegler et al. 2019, https://arxiv.org/abs/1909.08593;
Ouyang et al. 2022, https://arxiv.org/abs/2203.02155), then shifted and scaled so that the
rewards of reference responses have mean 0 and std 1. With no data file it uses a built-in
task that needs no download: synthetic movie reviews scored by VADER and compared by
simulated annotators. rlhf_ppo_gpt2.py loads the result with --reward-model-path.

    python reward_model.py --model-name tiny --output-dir runs/rm   # built-in task, CPU, ~1 min
    python reward_model.py --label --output-dir runs/mine   # you label: preferences.jsonl there
    python reward_model.py --preference-data runs/mine/preferences.jsonl --output-dir runs/mine

--model-name gpt2 (the default) is downloaded once into the Hugging Face cache; offline, set
HF_HUB_OFFLINE=1 so that the cache is read without a minute of retries.
"""

import signal
import sys

if __name__ == "__main__":  # until main() runs, Ctrl-C ends the process without a traceback
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if "--label" in sys.argv:  # the imports take seconds: the screen should not stay blank
        print("starting the labelling tool (loading PyTorch) ...", flush=True)

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import re
import shutil
import textwrap
import threading
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging


def flag(default, help, rule=None):
    """A field of Args that is also a --flag; parse_args checks its rule (see RULES)."""
    return dataclasses.field(default=default, metadata=dict(help=help, rule=rule))


@dataclasses.dataclass
class Args:
    seed: int = flag(1, "seed of numpy, torch and the built-in task", "in [0, 2^32)")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and reward_model/ go here; default runs/<task>__...")
    overwrite: bool = flag(False, "replace the reward model of an earlier run in --output-dir")
    model_name: str = flag("gpt2", "'tiny' (a random small GPT-2, no download), hub name, dir")
    preference_data: str = flag("", "JSONL of {prompt, chosen, rejected}; '' = the built-in task")
    annotator_temperature: float = flag(0.1, "τ of the simulated annotators; 0 = noiseless", ">= 0")
    num_pairs: int = flag(16_000, "preference pairs generated for the built-in task", "> 0")
    eval_fraction: float = flag(0.1, "fraction of the pairs held out for accuracy", "in [0, 1]")
    num_reference: int = flag(2000, "built-in demonstrations that normalise the rewards", "> 0")
    epochs: int = flag(3, "passes over the training pairs", "> 0")
    batch_size: int = flag(32, "preference pairs per gradient step", "> 0")
    learning_rate: float = flag(0.0, "AdamW step size; 0 = 3e-3 for tiny, 1e-5 otherwise", ">= 0")
    weight_decay: float = flag(0.0, "AdamW weight decay", ">= 0")
    max_grad_norm: float = flag(1.0, "clip the global gradient norm to this", "> 0")
    label: bool = flag(False, "label pairs yourself in the terminal instead of training")
    label_input: str = flag("", "--label: JSONL of {prompt, a, b}; '' = sample built-in pairs")
    label_output: str = flag("", "--label: answers; '' = preferences.jsonl in --output-dir or runs")
    label_pairs: int = flag(50, "--label: pairs sampled from the built-in task", "> 0")


# ---- shared with rlhf_ppo_gpt2.py (tests/test_shared_code.py checks the copies are identical) ----
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


def builtin_preferences(rng, n, temperature):
    """n pairs {"prompt", "chosen", "rejected"}: two demonstrations for one prompt, ordered by
    a simulated annotator of temperature τ."""
    demos, second = builtin_demonstrations(rng, n), sample_responses(rng, n)
    first = [d["response"] for d in demos]
    pick = annotator_prefers_first(rng, gold_scores(first), gold_scores(second), temperature)
    return [{"prompt": d["prompt"], "chosen": a if p else b, "rejected": b if p else a}
            for d, a, b, p in zip(demos, first, second, pick, strict=True)]  # fmt: skip


def pair_accuracies(r_chosen, r_rejected, gold_chosen=None, gold_rejected=None):
    """Held-out accuracies of the reward model r:

        label accuracy = mean 1[r(x, y_c) > r(x, y_r)]  (agreement with the annotators)
        gold accuracy  = mean over pairs with g_c ≠ g_r of 1[(r_c > r_r) = (g_c > g_r)]

    Gold ties carry no order and are left out; None without gold scores.
    """
    right = (np.asarray(r_chosen) > np.asarray(r_rejected)).astype(float)
    if gold_chosen is None:
        return right.mean(), None
    g_c, g_r = np.asarray(gold_chosen), np.asarray(gold_rejected)
    gold = (right.astype(bool) == (g_c > g_r))[g_c != g_r]
    return right.mean(), (gold.mean() if len(gold) else None)


def split_held_out(pairs, rng, eval_fraction):
    """(training pairs, held-out pairs): a random max(1, round(f·n)) of the n pairs are held
    out, at least one is left to train on."""
    perm = rng.permutation(len(pairs))
    n_eval = max(1, round(eval_fraction * len(pairs)))
    require(len(pairs) - n_eval >= 1, f"{len(pairs)} preference pairs: too few to hold {n_eval} "
            "out (--eval-fraction) and train on the rest")  # fmt: skip
    return [pairs[i] for i in perm[n_eval:]], [pairs[i] for i in perm[:n_eval]]


def length_grouped_batches(rng, lengths, batch_size, pool=16):
    """Index batches for one epoch: shuffle, sort by length within pools of `pool` batches,
    then shuffle the batch order. A batch pads to the longest of similar lengths, which
    saves about a third of the tokens on the built-in task; each pool is still a random
    sample, so the batches stay close to i.i.d."""
    order = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(order), pool * batch_size):
        chunk = order[i : i + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def train(args):
    """Bradley-Terry steps → held-out accuracy per epoch → normalise → save (or --label)."""
    if args.label:
        return label_preferences(args)
    start = time.time()
    task = os.path.basename(args.preference_data) if args.preference_data else "builtin-reviews"
    out = args.output_dir or f"runs/{task}__reward_model__{args.seed}__{int(start)}"
    path = os.path.join(out, "reward_model")
    require(args.overwrite or not os.path.exists(path),
            f"--output-dir {out} holds a run; pass --overwrite to replace it")  # fmt: skip
    device = seed_and_device(args.seed, args.cuda)
    rng = np.random.default_rng(args.seed)
    hf_logging.disable_progress_bar()  # loading and saving weights: no bars in the log
    sides = ("chosen", "rejected")
    if args.preference_data:
        pairs = read_jsonl("--preference-data", args.preference_data, ("prompt", *sides), (), sides)
    else:
        pairs = builtin_preferences(rng, args.num_pairs, args.annotator_temperature)
    pairs, held_out = split_held_out(pairs, rng, args.eval_fraction)
    if len(held_out) < 20:  # e.g. 2 labels: 1 pair to train on, 1 held out
        print(f"warning: {len(held_out)} held-out pairs give a rough accuracy", file=sys.stderr)
    # Gold scores exist for the built-in task only: VADER is no judge of other data.
    gold = [] if args.preference_data else [gold_scores([p[k] for p in held_out]) for k in sides]
    backbone, tokenizer = load_gpt2(GPT2Model, args.model_name)
    model = RewardModel(backbone).to(device)
    lr = args.learning_rate or (3e-3 if args.model_name == "tiny" else 1e-5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    # Tokens in the longer sequence of each pair: what the pair's batch is padded to.
    tokens = [tokenizer([p["prompt"] + p[k] for p in pairs])["input_ids"] for k in sides]
    lengths = np.maximum(*[np.array([len(ids) for ids in side]) for side in tokens])
    total_steps = args.epochs * -(-len(pairs) // args.batch_size)
    # Linear decay to 0: the last, small steps average out the annotators' label noise.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total_steps)
    threading.excepthook = lambda a: isinstance(a.exc_value, OSError) or sys.excepthook(*a[:3])
    writer = SummaryWriter(out, flush_secs=2)  # on Ctrl-C close() waits a flush
    writer.add_text("args", json.dumps(vars(args), indent=1))
    print(f"{args.model_name} reward model, {task}: {len(pairs)} pairs; files in {out}")

    step, t0 = 0, time.time()
    try:
        for epoch in range(1, args.epochs + 1):
            model.train()  # dropout is off in the config; train() only marks the phase
            for indices in length_grouped_batches(rng, lengths, args.batch_size):
                batch, n = [pairs[i] for i in indices], len(indices)
                prompts = [p["prompt"] for p in batch] * 2  # one forward pass: [chosen; rejected]
                responses = [p[k] for k in sides for p in batch]
                ids, mask, _ = encode(tokenizer, prompts, responses, backbone.config.n_positions)
                rewards = model(ids.to(device), mask.to(device))
                loss = bradley_terry_loss(rewards[:n], rewards[n:])
                require(torch.isfinite(loss), f"non-finite loss at step {step + 1}; nothing was "
                        "saved; try a lower --learning-rate")  # fmt: skip
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                if step % 20 == 0 or step == total_steps:
                    acc = (rewards[:n] > rewards[n:]).float().mean().item()
                    writer.add_scalar("train/loss", loss.item(), step)
                    writer.add_scalar("train/label_accuracy", acc, step)
                    writer.add_scalar("train/learning_rate", scheduler.get_last_lr()[0], step)
                progress(step, total_steps, t0, loss=loss)
            model.eval()
            prompts = [p["prompt"] for p in held_out]
            r_c, r_r = (score(model, tokenizer, prompts, [p[k] for p in held_out]) for k in sides)
            label_acc, gold_acc = pair_accuracies(r_c, r_r, *gold)
            writer.add_scalar("eval/label_accuracy", label_acc, step)
            line = f"epoch {epoch}: held-out accuracy vs annotators {label_acc:.3f}"
            if gold_acc is not None:
                writer.add_scalar("eval/gold_accuracy", gold_acc, step)
                line += f", vs gold order {gold_acc:.3f}"
            print(line)
        train_time = time.time() - t0

        # Normalise r ← (r − μ)/σ so that reference responses score mean 0, std 1: on the
        # built-in task --num-reference fresh demonstrations (the distribution that SFT
        # imitates); on a user's data both responses of every training pair.
        if args.preference_data:
            ref = [p["prompt"] for p in pairs] * 2, [p[k] for k in sides for p in pairs]
        else:
            demos = builtin_demonstrations(rng, args.num_reference)
            ref = [d["prompt"] for d in demos], [d["response"] for d in demos]
        require_finite(model, "the reward model", "nothing was saved; try a lower --learning-rate")
        raw_mean, raw_std = model.normalize_(score(model, tokenizer, *ref))
        with signals_held():  # a Ctrl-C or SIGTERM now waits until the model is whole
            model.save(path, tokenizer)
    finally:
        writer.close()
    print(f"saved {path}; reference rewards normalised from mean {raw_mean:.3f}, std {raw_std:.3f}")
    return dict(algo="reward_model", seed=args.seed, train_pairs=len(pairs),
                eval_pairs=len(held_out), eval_label_accuracy=label_acc,
                eval_gold_accuracy=gold_acc, reference_reward_mean=raw_mean,
                reference_reward_std=raw_std, train_time_s=train_time,
                wall_time_s=time.time() - start, reward_model_path=path)  # fmt: skip


def mend_last_line(path):
    """Before answers are appended: a last line without its newline is a whole answer (the
    newline is added) or one torn by an interrupted write (moved to path + '.torn')."""
    with open(path, "ab+") as f:
        f.seek(0)
        data = f.read()
        tail = data[data.rfind(b"\n") + 1 :]
        try:
            tail and json.loads(tail)  # a whole answer: only its newline is missing
        except (ValueError, RecursionError):
            with open(path + ".torn", "ab") as torn:
                torn.write(tail + b"\n")
            f.truncate(len(data) - len(tail))
            return print(f"{path}: its last line, torn by an interrupted write, is in {path}.torn")
        f.write(b"\n" * bool(tail))


def label_preferences(args):
    """Show pairs; append each answer to --label-output at once, flushed and fsync-ed, so that
    Ctrl-C, a crash or a power cut loses at most the pair on screen. A rerun skips the pairs
    already answered (in either order of the two responses); each pair is asked once. What a
    terminal would act on (escapes, carriage returns, bidi overrides) is shown as repr() does."""
    printable = lambda t: "".join(c if c.isprintable() else repr(c)[1:-1] for c in t)  # noqa: E731
    require(sys.stdin is not None, "--label reads the answers from standard input, which is closed")
    output = args.label_output or os.path.join(args.output_dir or "runs", "preferences.jsonl")
    if args.label_input:
        pairs = read_jsonl("--label-input", args.label_input, ("prompt", "a", "b"), pair=("a", "b"))
        question = "Which response is better, by the criterion that you label for?"
    else:  # a pure function of --seed, so that a resumed session sees the same pairs
        rng = np.random.default_rng(args.seed)
        demos = builtin_demonstrations(rng, args.label_pairs)
        second = sample_responses(rng, args.label_pairs)
        pairs = [{"prompt": d["prompt"], "a": d["response"], "b": b}
                 for d, b in zip(demos, second, strict=True) if d["response"] != b]  # fmt: skip
        question = ("Which review is more positive about the film? The built-in task's gold "
                    "score (VADER sentiment) rewards positive words, not style.")  # fmt: skip
    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    mend_last_line(output)
    keys = ("prompt", "chosen", "rejected")  # the answers of earlier sessions:
    rows = read_jsonl("--label-output", output, keys) if os.path.getsize(output) else []
    done = {(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in rows}
    unique = {}  # each distinct pair once, unless it was answered before
    for p in pairs:
        unique.setdefault((p["prompt"], frozenset((p["a"], p["b"]))), p)
    todo = [p for key, p in unique.items() if key not in done]
    header = (f"{len(unique) - len(todo)} of {len(unique)} pairs already answered in {output}; "
              f"{len(todo)} to go. {question} Answer 1 or 2; s = skip, q = quit.")  # fmt: skip
    width = shutil.get_terminal_size().columns - 1
    print(textwrap.fill(header, width, break_long_words=False, break_on_hyphens=False))
    answered = skipped = 0
    with open(output, "a", encoding="utf-8") as out:
        for k, p in enumerate(todo, 1):
            prompt, a, b = (printable(p[key]) for key in ("prompt", "a", "b"))
            print(f"\n[{k}/{len(todo)}] {prompt}\n  1: {prompt}{a}\n  2: {prompt}{b}")
            print("better? [1/2/s/q] ", end="", flush=True)
            while (ans := (sys.stdin.readline() or "q").strip().lower()) not in "1 2 s q".split():
                print(f"{printable(ans)!r} is not an answer: type 1 or 2 for the better response,"
                      " s to skip, q to quit\nbetter? [1/2/s/q] ", end="", flush=True)  # fmt: skip
            if ans == "q":
                break
            if ans == "s":
                skipped += 1
                continue
            chosen, rejected = (p["a"], p["b"]) if ans == "1" else (p["b"], p["a"])
            out.write(json.dumps(dict(prompt=p["prompt"], chosen=chosen, rejected=rejected)) + "\n")
            out.flush()
            os.fsync(out.fileno())
            answered += 1
    print(f"\n{answered} answers saved; to train: reward_model.py --preference-data {output}")
    return dict(mode="label", answered=answered, skipped=skipped, pairs_total=len(unique),
                answered_total=len(unique) - len(todo) + answered, label_output=output)  # fmt: skip


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


def seed_and_device(seed, cuda):
    """Seed numpy and torch; one thread (small networks lose time to more); the device."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    return torch.device("cuda" if cuda and torch.cuda.is_available() else "cpu")


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
