"""Reward model for RLHF (stage 2), plus a terminal tool to collect real human preferences.

A GPT-2 backbone with a scalar head is trained on preference pairs with the Bradley-Terry
loss -log σ(r(x, y_chosen) - r(x, y_rejected)) (Christiano et al. 2017,
https://arxiv.org/abs/1706.03741; Ziegler et al. 2019, https://arxiv.org/abs/1909.08593;
Ouyang et al. 2022, https://arxiv.org/abs/2203.02155), then shifted and scaled so that the
rewards of reference responses have mean 0 and std 1. With no data file it uses a built-in
task that needs no download: synthetic movie reviews scored by VADER and compared by
simulated annotators. rlhf_ppo_gpt2.py loads the result with --reward-model-path.

    python reward_model.py --model-name tiny            # built-in task, CPU, under a minute
    python reward_model.py --preference-data prefs.jsonl  # {"prompt","chosen","rejected"}
    python reward_model.py --label --label-output prefs.jsonl  # you are the annotator
"""

import argparse
import dataclasses
import functools
import json
import os
import random
import re
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch.utils.tensorboard import SummaryWriter
from transformers import AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the built-in task")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and the reward model go here; default runs/<run-name>")
    model_name: str = flag(
        "gpt2", "'tiny' (random small GPT-2, no download), a hub name, or a local directory"
    )
    preference_data: str = flag("", "JSONL of {prompt, chosen, rejected}; '' = built-in task")
    annotator_temperature: float = flag(
        0.1, "τ of the simulated annotators, P(y1 preferred) = σ((g1 - g2)/τ); 0 = noiseless"
    )
    num_pairs: int = flag(16_000, "preference pairs generated for the built-in task")
    eval_fraction: float = flag(0.1, "fraction of the pairs held out for accuracy")
    num_reference: int = flag(2000, "built-in demonstrations used to normalise the rewards")
    epochs: int = flag(2, "passes over the training pairs")
    batch_size: int = flag(64, "preference pairs per gradient step")
    learning_rate: float = flag(1e-3, "Adam step size (use ~1e-5 for pretrained gpt2)")
    weight_decay: float = flag(0.0, "AdamW weight decay")
    max_grad_norm: float = flag(1.0, "gradient-norm clipping threshold")
    label: bool = flag(False, "label pairs yourself in the terminal instead of training")
    label_input: str = flag("", "--label: JSONL of {prompt, a, b}; '' = sample built-in pairs")
    label_output: str = flag("preferences.jsonl", "--label: answers are appended here")
    label_pairs: int = flag(50, "--label: pairs sampled from the built-in task")


def parse_args(argv=None) -> Args:
    """Build the command line from the fields of Args: --flag-name, --x/--no-x for booleans."""
    parser = argparse.ArgumentParser(description=sys.modules[__name__].__doc__.split("\n")[0])
    for f in dataclasses.fields(Args):
        kind = type(f.default)
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=None if kind is bool else kind,
            action=argparse.BooleanOptionalAction if kind is bool else None,
            default=f.default,
            help=f.metadata["help"] + " (default: %(default)s)",
        )
    parser.error = lambda message: sys.exit(f"error: {message} (see --help)")
    return Args(**vars(parser.parse_args(argv)))


def save_atomic(obj, path):
    """torch.save to a temporary file, then rename: a crash never leaves a half-written file."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


# ---- shared with rlhf_ppo_gpt2.py (tests/test_shared_code.py checks the copies are identical) ----
# The built-in task: synthetic movie reviews. A prompt opens a review ("The plot"); a response
# continues it from this grammar (every response starts with a space, GPT-2 style, and ends
# with a period; tokenisation appends EOS):
#     response := " " VERB CLAUSE [" " CONJUNCTION CLAUSE] "."
#     CLAUSE   := [" not"] [" " ADVERB] " " ADJECTIVE
# Adjectives are positive, neutral or negative at two strengths; adverbs are VADER's
# intensifiers and dampeners; "not" flips polarity and "but" shifts weight to the second
# clause, so the gold score is not a bag of words. The word lists are balanced so that the
# demonstrations average a gold score near 0: an SFT policy starts neutral.
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
_CLAUSE = rf"(?: not)?(?: (?:{'|'.join(ADVERBS)}))? (?:{'|'.join(_ADJECTIVES)})"
WELL_FORMED = re.compile(rf" (?:{'|'.join(VERBS)}){_CLAUSE}(?: (?:and|but){_CLAUSE})?\.")
EOS_TOKEN = "<|endoftext|>"  # GPT-2's end of text; also the padding token (masks say which)


def sample_responses(rng, n):
    """n responses from the grammar above, a pure function of the numpy Generator `rng`.

    Each clause: "not" with p = 0.2, an adverb with p = 0.5, a uniform adjective; a second
    clause with p = 0.5.
    """
    verb = rng.integers(len(VERBS), size=n)
    neg = rng.random((n, 2)) < 0.2
    has_adv = rng.random((n, 2)) < 0.5
    adv = rng.integers(len(ADVERBS), size=(n, 2))
    adj = rng.integers(len(_ADJECTIVES), size=(n, 2))
    two = rng.random(n) < 0.5
    conj = rng.integers(len(CONJUNCTIONS), size=n)

    def clause(i, k):
        return (
            (" not" if neg[i, k] else "")
            + (" " + ADVERBS[adv[i, k]] if has_adv[i, k] else "")
            + " "
            + _ADJECTIVES[adj[i, k]]
        )

    return [
        " " + VERBS[verb[i]] + clause(i, 0)
        + (" " + CONJUNCTIONS[conj[i]] + clause(i, 1) if two[i] else "")
        + "."
        for i in range(n)
    ]  # fmt: skip


def builtin_demonstrations(rng, n):
    """n demonstrations {"prompt", "response"}: a uniform prompt and a grammar response."""
    prompts = rng.integers(len(PROMPTS), size=n)
    return [
        {"prompt": PROMPTS[p], "response": r}
        for p, r in zip(prompts, sample_responses(rng, n), strict=True)
    ]


def is_well_formed(response):
    """True iff the grammar can produce `response` exactly (no EOS, leading space included)."""
    return WELL_FORMED.fullmatch(response) is not None


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
    # P(y1 ≻ y2) = σ((g1 - g2) / τ)
    return u < 1 / (1 + np.exp(-diff / temperature))


def builtin_preferences(rng, n, temperature):
    """n pairs {"prompt", "chosen", "rejected"}: two demonstrations for one prompt, ordered by
    a simulated annotator of temperature τ."""
    demos = builtin_demonstrations(rng, n)
    second = sample_responses(rng, n)
    first = [d["response"] for d in demos]
    pick = annotator_prefers_first(rng, gold_scores(first), gold_scores(second), temperature)
    return [
        {"prompt": d["prompt"], "chosen": a if p else b, "rejected": b if p else a}
        for d, a, b, p in zip(demos, first, second, pick, strict=True)
    ]


def read_jsonl(path, keys):
    """Rows of a JSONL file, each a dict with string values for `keys`; a malformed line or a
    missing key raises ValueError naming the file and line, and so does an empty file."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
            missing = [
                k for k in keys if not isinstance(row, dict) or not isinstance(row.get(k), str)
            ]
            if missing:
                raise ValueError(f"{path}:{line_no}: needs string fields {', '.join(missing)}")
            rows.append({k: row[k] for k in keys})
    if not rows:
        raise ValueError(f"{path}: no examples; expected one JSON object per line with {keys}")
    return rows


def train_tiny_tokenizer():
    """A byte-level BPE (GPT-2's scheme) trained on the built-in task's words, so that each
    word is one token; deterministic, and any other text still encodes, byte by byte."""
    corpus = list(PROMPTS) + [" " + w for w in VERBS + ADVERBS + _ADJECTIVES + CONJUNCTIONS]
    corpus += [" not", "."]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def load_gpt2(model_cls, model_name):
    """(model, tokenizer): `model_cls` (GPT2Model or GPT2LMHeadModel) with dropout off.

    'tiny': a small random GPT-2 (initialised from torch's global RNG) and a locally trained
    tokenizer. Otherwise a hub name or a local directory, e.g. 'gpt2': the pretrained weights
    from a local directory, the local cache, or the hub.
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
        # The cache or a local directory first: without a network the hub call only fails
        # after a minute of retries.
        try:
            model = model_cls.from_pretrained(model_name, local_files_only=True, **no_dropout)
            tokenizer = AutoTokenizer.from_pretrained(model_name, local_files_only=True)
        except OSError:
            model = model_cls.from_pretrained(model_name, **no_dropout)
            tokenizer = AutoTokenizer.from_pretrained(model_name)
    except OSError as e:
        raise OSError(
            f"cannot load '{model_name}' from a local directory, the Hugging Face cache or the "
            f"hub ({str(e).splitlines()[0]}); use --model-name tiny (no download), or pass a "
            "directory that holds a saved GPT-2 (config.json, weights, tokenizer files)"
        ) from None
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has no pad token; masks mark padding
    tokenizer.clean_up_tokenization_spaces = False
    return model.eval(), tokenizer


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


def bradley_terry_loss(r_chosen, r_rejected):
    """Bradley-Terry negative log-likelihood of the human choices (Christiano et al. 2017):

    L = -mean log σ(r(x, y_c) - r(x, y_r))
    """
    # L = -mean log σ(r_c - r_r); logsigmoid is stable where log(sigmoid(.)) underflows
    return -F.logsigmoid(r_chosen - r_rejected).mean()


def replace_dir(tmp, path):
    """Move the finished directory `tmp` to `path`. A directory cannot be renamed over a full
    one, so the old one steps aside first; a crash leaves it, whole, at path + '.old'."""
    if os.path.exists(path):
        shutil.rmtree(path + ".old", ignore_errors=True)
        os.replace(path, path + ".old")
    os.replace(tmp, path)
    shutil.rmtree(path + ".old", ignore_errors=True)


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
        # The last index where mask == 1: right, left or no padding alike.
        last = (
            attention_mask * torch.arange(attention_mask.shape[1], device=hidden.device)
        ).argmax(-1)
        return self.head(hidden[torch.arange(len(last)), last]).squeeze(-1)

    @torch.no_grad()
    def normalize_(self, reference_rewards):
        """Fold r ← (r - μ)/σ into the head, with μ, σ the mean and (sample) std of the rewards
        of reference responses: they then score mean 0, std 1 (Ziegler et al. 2019)."""
        mean, std = reference_rewards.mean(), reference_rewards.std()
        # r' = (w·h + b - μ)/σ = (w/σ)·h + (b - μ)/σ
        self.head.weight.div_(std)
        self.head.bias.sub_(mean).div_(std)
        return mean.item(), std.item()

    def save(self, path, tokenizer):
        """backbone.save_pretrained + the tokenizer + the head, written atomically."""
        tmp = path.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.backbone.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(self.head.state_dict(), os.path.join(tmp, "reward_head.pt"))
        replace_dir(tmp, path.rstrip("/"))

    @classmethod
    def load(cls, path):
        """(reward model, tokenizer) saved by `save`, on the CPU, dropout off."""
        if not os.path.isfile(os.path.join(path, "reward_head.pt")):
            raise OSError(f"{path}: no reward model here (reward_head.pt is missing)")
        backbone = GPT2Model.from_pretrained(path, local_files_only=True)
        model = cls(backbone)
        model.head.load_state_dict(
            torch.load(os.path.join(path, "reward_head.pt"), map_location="cpu")
        )
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
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


# ---- end of shared block ----


def main(argv=None):
    """Run train(), print its summary as the last stdout line; bad input exits with one line."""
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("error: interrupted; checkpoints written so far are kept", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(summary), flush=True)


def train(args):
    raise NotImplementedError


if __name__ == "__main__":
    main()
