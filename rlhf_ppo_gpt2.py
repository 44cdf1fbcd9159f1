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
  keeps it fixed); Dr. GRPO keeps the k3 term (the paper drops it, with a checkable reward).

    python rlhf_ppo_gpt2.py --model-name tiny                  # built-in task, CPU, ~1 minute
    python rlhf_ppo_gpt2.py --model-name tiny --algo grpo      # critic-free, 16 prompts x 4
    python rlhf_ppo_gpt2.py --reward-model-path runs/rm/reward_model  # RM of reward_model.py
    python rlhf_ppo_gpt2.py --help
"""

import argparse
import contextlib
import copy
import dataclasses
import functools
import glob
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass

try:  # Ctrl-C while torch loads (a second or two) gets one line, not a traceback
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    import torch.nn.functional as F
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Model,
        PreTrainedTokenizerFast,
    )
    from transformers.utils import logging as hf_logging
except KeyboardInterrupt:
    sys.exit("error: interrupted while starting up; nothing was written")


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy and torch")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and checkpoints go here; default runs/<run-name>")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
    model_name: str = flag("gpt2", "'gpt2' (pretrained, hub or local dir) or 'tiny' (offline)")
    sft_data: str = flag("", "JSONL of {prompt, response} for SFT; '' = built-in demonstrations")
    preference_data: str = flag("", "JSONL of {prompt, chosen, rejected}; '' = annotators label")
    reward_model_path: str = flag("", "RM saved by reward_model.py; '' = train one inline")
    annotator_temperature: float = flag(
        0.1, "τ of the simulated annotators, P(y1 preferred) = σ((g1 - g2)/τ); 0 = noiseless"
    )
    threads: int = flag(0, "torch CPU threads; 0 = 1 for --model-name tiny, else torch's default")
    # Stage 1: SFT
    sft_demos: int = flag(6144, "built-in demonstrations to fine-tune on")
    sft_epochs: int = flag(3, "passes over the demonstrations")
    sft_batch_size: int = flag(32, "demonstrations per SFT step")
    sft_lr: float = flag(3e-3, "Adam step size of SFT")
    # Stage 2: RM
    rm_pairs: int = flag(4096, "preference pairs sampled from the SFT policy for the inline RM")
    rm_epochs: int = flag(2, "passes over the preference pairs")
    rm_batch_size: int = flag(32, "pairs per RM step")
    rm_lr: float = flag(5e-4, "Adam step size of the RM")
    # Stage 3: PPO, or a critic-free policy gradient
    algo: str = flag("ppo", "'ppo' (critic + GAE) or critic-free 'rloo', 'grpo', 'dr_grpo'")
    reward: str = flag("rm", "stage-3 reward: 'rm' (the learned RM) or 'gold' (the task's scorer)")
    samples_per_prompt: int = flag(0, "responses per prompt, one generate(); 0 = 1 for ppo, else 4")
    ppo_iterations: int = flag(40, "rollout-then-update iterations")
    rollout_batch_size: int = flag(64, "responses per iteration (prompts x --samples-per-prompt)")
    minibatch_size: int = flag(16, "responses per gradient step")
    ppo_epochs: int = flag(4, "passes over each rollout batch")
    learning_rate: float = flag(1e-4, "Adam step size of the policy and the value model")
    adam_eps: float = flag(1e-5, "Adam epsilon (PyTorch adds it outside the sqrt, TF inside)")
    temperature: float = flag(1.0, "sampling temperature; log-probs are recomputed with it too")
    max_new_tokens: int = flag(16, "longest response; a response without EOS is cut here")
    clip_coef: float = flag(0.2, "PPO ratio clip epsilon")
    value_clip: float = flag(0.2, "clip of the value change per update (0 = no value clipping)")
    max_grad_norm: float = flag(1.0, "gradient-norm clip, applied to each model separately")
    gamma: float = flag(1.0, "discount over response tokens")
    gae_lambda: float = flag(0.95, "GAE lambda over response tokens")
    init_kl_coef: float = flag(
        0.2, "initial KL penalty coefficient beta (ppo, rloo: in the reward)"
    )
    loss_kl_coef: float = flag(0.5, "initial beta of the k3 KL loss term (grpo, dr_grpo)")
    kl_target: float = flag(4.0, "target KL(pi||pi_ref) in nats per response; 0 = fixed beta")
    kl_horizon: int = flag(500, "horizon (in responses) of the adaptive KL controller")
    no_eos_penalty: float = flag(1.0, "subtracted from the RM score of a response with no EOS")
    eval_samples: int = flag(256, "responses sampled to evaluate the SFT and the final policy")
    sample_every: int = flag(10, "print a few sample responses every N iterations (0 = never)")


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


def check_flags(args, positive=(), nonneg=(), unit=()):
    """The one rule every script applies to its numeric flags, naming the flag at fault: every
    float flag finite (a NaN trains nothing and an inf stalls it); every count, step size or
    norm bound > 0 (a negative gradient-norm bound would flip the gradient); every weight, ε
    or tolerance ≥ 0; every probability, γ or λ in [0, 1]."""
    for field in dataclasses.fields(args):
        value = getattr(args, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"--{field.name.replace('_', '-')} must be finite, not {value}")
    rules = (
        (positive, lambda v: v > 0, "positive"),
        (nonneg, lambda v: v >= 0, "0 or more"),
        (unit, lambda v: 0 <= v <= 1, "in [0, 1]"),
    )
    for names, ok, what in rules:
        for name in names:
            if not ok(getattr(args, name)):
                raise ValueError(
                    f"--{name.replace('_', '-')} must be {what}, not {getattr(args, name)}"
                )


def check_memory(nbytes, flags):
    """ValueError, before anything is allocated, if about `nbytes` would not fit in half of
    this machine's memory: numpy and torch would fail with a traceback, or the run would swap."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if nbytes > total / 2:
        gib = min(nbytes, 2**100) / 2**30  # a huge int would overflow the float division
        raise ValueError(f"{flags} need about {gib:.3g} GiB, more than half of this "
                         f"machine's {total / 2**30:.0f} GiB; lower them")  # fmt: skip


@contextlib.contextmanager
def signals_held():
    """Hold Ctrl-C and SIGTERM while the final files are written, then act on them: an
    interrupt inside torch.save would leave a temporary file and no checkpoint at all."""
    caught = []
    held = {
        s: signal.signal(s, lambda *_: caught.append(1)) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)
    if caught:
        raise KeyboardInterrupt


def save_atomic(obj, path, write=torch.save):
    """write(obj, path + ".tmp"), then rename it over `path`: a reader finds the old file or the
    complete new one, never half of one. A failed write (a full disk, a read-only directory)
    removes the temporary file, keeps the old one, and is an OSError that names `path`."""
    tmp = path + ".tmp"
    try:
        write(obj, tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError | RuntimeError):  # torch.save reports ENOSPC as RuntimeError
            raise OSError(f"cannot write {path}: {' '.join(str(e).split())[:200]}") from None
        raise


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
_CLAUSE = (
    rf" (?:{'|'.join(VERBS)})(?: not)?(?: (?:{'|'.join(ADVERBS)}))? (?:{'|'.join(_ADJECTIVES)})"
)
WELL_FORMED = re.compile(rf"{_CLAUSE}(?: (?:{'|'.join(CONJUNCTIONS)}) it{_CLAUSE})?\.")
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
        return (
            " "
            + VERBS[verb[i, k]]
            + (" not" if neg[i, k] else "")
            + (" " + ADVERBS[adv[i, k]] if has_adv[i, k] else "")
            + " "
            + _ADJECTIVES[adj[i, k]]
        )

    return [
        clause(i, 0) + (" " + CONJUNCTIONS[conj[i]] + " it" + clause(i, 1) if two[i] else "") + "."
        for i in range(n)
    ]


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


def read_jsonl(path, keys, nonempty=(), pair=()):
    """Rows of a UTF-8 JSONL file (a byte-order mark may open it), each a dict with string
    values for `keys`; the `nonempty` keys must not be empty, and the two `pair` keys are two
    responses, which must be non-empty and differ (an identical pair states no preference).
    Any problem with a line (bytes that are not UTF-8, bad or too deeply nested JSON, a missing
    key, a lone UTF-16 surrogate, which no tokenizer accepts) raises ValueError naming the
    file and line, and so does an empty file."""
    rows = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"{path}:{line_no}"
            try:
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{where}: not UTF-8 (byte {e.start + 1} is {raw[e.start]:#x})"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise ValueError(f"{where}: JSON nested too deeply") from None
            missing = [
                k for k in keys if not isinstance(row, dict) or not isinstance(row.get(k), str)
            ]
            if missing:
                raise ValueError(f"{where}: needs string fields {', '.join(missing)}")
            surrogates = [k for k in keys if re.search("[\ud800-\udfff]", row[k])]
            if surrogates:
                raise ValueError(f"{where}: lone UTF-16 surrogate in {', '.join(surrogates)}")
            empty = [k for k in (*nonempty, *pair) if not row[k]]
            if empty:
                raise ValueError(f"{where}: empty {', '.join(empty)}")
            if pair and row[pair[0]] == row[pair[1]]:
                raise ValueError(f"{where}: {' and '.join(pair)} are the same text: no preference")
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


def hub_reachable(timeout=3.0):
    """False, at once, under HF_HUB_OFFLINE=1, or when the hub's host does not accept a TCP
    connection within `timeout` seconds. Without a network, from_pretrained() retries for
    30-60 s before it gives up; this probe answers in a few. Behind an HTTPS proxy a direct
    connection proves nothing, so the hub is then assumed reachable."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    url = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError:  # no route, refused, timed out, or the name does not resolve
        return False
    return True


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
            if os.path.isdir(model_name):
                raise
            if not hub_reachable():
                raise OSError("not found locally; the Hugging Face hub is unreachable") from None
            print(f"{model_name}: not found locally; trying the Hugging Face hub", file=sys.stderr)
            # Its retry warnings would bury the one-line error below.
            logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
            model = model_cls.from_pretrained(model_name, **no_dropout)
            tokenizer = AutoTokenizer.from_pretrained(model_name)
    except Exception as e:  # missing, truncated or foreign files: the loaders raise many kinds
        raise OSError(
            f"cannot load '{model_name}' from a local directory, the Hugging Face cache or the "
            f"hub ({brief(e)}); use --model-name tiny (no download), or pass a "
            "directory that holds a saved GPT-2 (config.json, weights, tokenizer files)"
        ) from None
    require_finite(model, f"--model-name {model_name}", "it was saved from a diverged run")
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
    """An exception's message on one line of at most 200 characters, for an `error:` line."""
    return " ".join(str(e).split())[:200] or type(e).__name__


def quiet_tensorboard_thread(hook):
    """threading.excepthook that drops the OSError of TensorBoard's writer thread (a full disk):
    that thread stops, the main thread's next call to the writer raises the same OSError, and
    main() reports it in one line, which the thread's traceback would only garble."""
    if not (issubclass(hook.exc_type, OSError) and "tensorboard" in type(hook.thread).__module__):
        threading.__excepthook__(hook)


def require_finite(model, what, hint):
    """FloatingPointError if a weight of `model` is NaN or infinite: such a model must be
    neither saved nor sampled from. The message names `what` and the likely cause, `hint`."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        raise FloatingPointError(f"{what} has non-finite weights; {hint}")


def earlier_outputs(out, overwrite, patterns):
    """The files of an earlier run in `out`: those matching the glob `patterns` (what this
    script writes). A ValueError if there are any and not --overwrite: a rerun must never mix
    its files with an earlier run's, nor truncate them."""
    found = [p for pat in patterns for p in sorted(glob.glob(os.path.join(glob.escape(out), pat)))]
    if found and not overwrite:
        raise ValueError(
            f"--output-dir {out} holds an earlier run ({os.path.basename(found[0])}"
            f"{', ...' if found[1:] else ''}); name a new directory, or pass --overwrite"
        )
    return found


def make_output_dir(out, stale):
    """Delete `stale` (an earlier run's files, under --overwrite), create `out` and check that
    it is writable: an unusable directory is one line naming it, before any training."""
    try:
        for p in stale:
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
        os.makedirs(out, exist_ok=True)
        tempfile.TemporaryFile(dir=out).close()
    except OSError as e:
        raise OSError(f"cannot write to --output-dir {out}: {e.strerror or e}") from None


def activation_bytes(config, sequences, length):
    """About the memory of a forward and backward pass of a GPT-2 over `sequences` of `length`
    tokens: per token, float32 activations of each layer (~20 n_embd, and n_head attention
    weights per position) and three copies of the logits (logits, log-softmax, gradient)."""
    per_layer = 20 * config.n_embd + config.n_head * length
    return 4 * sequences * length * (3 * config.vocab_size + config.n_layer * per_layer)


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


# ---- end of shared block ----


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


# ---- data parallelism (torchrun): none of this runs in a plain `python rlhf_ppo_gpt2.py` ----


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


def all_gather_cat(x):
    """The ranks' tensors concatenated in rank order (dim 0); x itself in a plain run. The
    ranks may hold different lengths."""
    rank, world_size = world()
    if world_size == 1:
        return x
    parts = [None] * world_size
    dist.all_gather_object(parts, x.cpu())
    return torch.cat(parts).to(x.device)


def all_gather_list(items):
    """The ranks' lists concatenated in rank order; the list itself in a plain run."""
    world_size = world()[1]
    if world_size == 1:
        return items
    parts = [None] * world_size
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def global_mean(stats):
    """Each float of `stats` averaged over the ranks (each holds the same number of
    responses); `stats` itself in a plain run."""
    world_size = world()[1]
    if world_size == 1:
        return stats
    values = all_reduce_sum(torch.tensor(list(stats.values()), dtype=torch.float64))
    return dict(zip(stats, (values / world_size).tolist(), strict=True))


def my_share(n):
    """Indices of this rank's contiguous block of range(n): all of it in a plain run."""
    rank, world_size = world()
    return np.array_split(np.arange(n), world_size)[rank]


def global_masked_whiten(x, mask, eps=1e-8):
    """masked_whiten with μ and the unbiased var over the unmasked entries of every rank:

    μ = Σ_r Σ x m / Σ_r Σ m,   var = Σ_r Σ (x - μ)² m / (Σ_r Σ m - 1).

    One rank: masked_whiten itself, so a plain run is not changed by a single bit."""
    if world()[1] == 1:
        return masked_whiten(x, mask, eps)
    # μ = Σ_r Σ x m / Σ_r Σ m
    sums = all_reduce_sum(torch.stack([(x * mask).sum(), mask.sum()]).double())
    mu = (sums[0] / sums[1]).to(x.dtype)
    # var = Σ_r Σ (x - μ)² m / (N - 1)
    var = all_reduce_sum(((x - mu) ** 2 * mask).sum().double()) / (sums[1] - 1)
    return (x - mu) * torch.rsqrt(var.to(x.dtype) + eps) * mask


def token_share(mask):
    """W · N_rank / N_global for the tokens of one minibatch. DDP averages the gradients of
    the W ranks, so a token mean over this rank's share, times this factor, gives the
    gradient of the token mean over the whole global minibatch, as one process computes it
    even when the ranks hold different numbers of tokens."""
    n = mask.sum().double()
    return (world()[1] * n / all_reduce_sum(n.clone())).float()


def shared_permutation(n):
    """torch.randperm(n), the same on every rank (rank 0's); a plain run draws it alone."""
    perm = torch.randperm(n)
    if world()[1] > 1:
        dist.broadcast(perm, 0)
    return perm


def my_batches(rows, batch_size, epochs):
    """`epochs` passes over `rows` in global batches of `batch_size`, each pass in a new order
    that every rank shares (shared_permutation). Yields this rank's rows of each global batch:
    under torchrun every W-th row, starting at its rank; in a plain run all of them."""
    rank, world_size = world()
    for _ in range(epochs):
        for idx in shared_permutation(len(rows)).split(batch_size):
            yield [rows[j] for j in idx[rank::world_size].tolist()]


def data_parallel(model):
    """The model wrapped in DistributedDataParallel for training under torchrun (gradients
    averaged across ranks in backward, parameters broadcast from rank 0 at wrap time); the
    model itself in a plain run. Generation, scoring and saving use the unwrapped model."""
    if world()[1] == 1:
        return model
    device = next(model.parameters()).device
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


class NullWriter:
    """TensorBoard's SummaryWriter for the ranks that write nothing (all but rank 0)."""

    def add_scalar(self, *args, **kwargs):
        pass

    def add_text(self, *args, **kwargs):
        pass

    def close(self):
        pass


def sft_loss(logits, labels, loss_mask):
    """L_SFT = -(1/|R|) sum_{t in R} log p(x_t | x_<t), over the response tokens R of the batch.

    logits[:, t] predicts labels[:, t + 1]. R holds the response tokens and the appended EOS
    (so the model learns to stop); prompt tokens and padding have loss_mask 0, so whatever
    sits in their labels does not matter."""
    mask = loss_mask[:, 1:].float()
    targets = torch.where(mask.bool(), labels[:, 1:], 0)
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, targets.unsqueeze(-1))
    # L = -sum_{t in R} log p(x_t | x_<t) / |R|
    return -(logp.squeeze(-1) * mask).sum() / mask.sum()


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta):
    """r_t = -beta (log pi(a_t|s_t) - log pi_ref(a_t|s_t)) + [t = last real token] r_phi(x, y).

    The RM judges the whole response, so its score lands once, on the last real token; the
    KL penalty (Ziegler et al. 2019) is paid on every response token; padding after
    EOS gets 0. mask must be a prefix of ones (the response, EOS included)."""
    # r_t = -beta * (log pi - log pi_ref), every response token
    rewards = -beta * (logprobs - ref_logprobs) * mask
    last = mask.sum(1).long() - 1
    # r_T += r_phi(x, y), last real token only
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
        # δ_t = r_t + γ V_{t+1} − V_t
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # Â_t = δ_t + γλ Â_{t+1}
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
    # 1/2 max((V - R)^2, (V_clip - R)^2)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (clipped - returns) ** 2), mask)


def adaptive_kl_coef(beta, kl, kl_target, n_steps, horizon):
    """Ziegler et al. 2019 (as in their code): e = clip(KL / KL_target - 1, -0.2, 0.2),
    beta <- beta (1 + e n_steps / horizon). kl_target = 0 keeps beta fixed.

    The error is clipped, so one noisy batch moves beta by at most 20% of n_steps/horizon."""
    if kl_target <= 0:
        return beta
    # e = clip(KL / KL_target - 1, -0.2, 0.2)
    e = min(max(kl / kl_target - 1.0, -0.2), 0.2)
    # beta <- beta (1 + e n / H)
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
    # k1 = −log r,  k2 = ½ (log r)²,  k3 = (r − 1) − log r
    return -log_r, 0.5 * log_r**2, log_r.exp() - 1 - log_r


def rloo_advantages(rewards, k):
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024) for rewards grouped k
    consecutive per prompt: the baseline of sample i is the mean reward of the other k − 1,

    Â_i = R_i − 1/(k−1) Σ_{j≠i} R_j  (= k/(k−1) (R_i − mean_j R_j)).

    The baseline does not depend on y_i, so the estimator stays unbiased."""
    R = rewards.view(-1, k)
    # Â_i = R_i − (Σ_j R_j − R_i) / (k − 1)
    return (R - (R.sum(1, keepdim=True) - R) / (k - 1)).flatten()


def group_advantages(rewards, k, scale_by_std, eps=1e-4):
    """Group-relative advantages for rewards grouped k consecutive per prompt:

    GRPO (Shao et al. 2024):       Â_i = (r_i − mean(r)) / (std(r) + ε)
    Dr. GRPO (Liu et al. 2025):    Â_i = r_i − mean(r)          (scale_by_std=False)

    std is the sample std (k − 1 in the denominator), as in TRL. A group whose rewards are all
    equal carries no signal: its advantages are exactly 0 (never NaN, whatever ε is)."""
    r = rewards.view(-1, k)
    same = r.max(1, keepdim=True).values == r.min(1, keepdim=True).values
    # Â_i = r_i − mean(r)
    adv = r - r.mean(1, keepdim=True)
    if scale_by_std:
        # Â_i = (r_i − mean(r)) / (std(r) + ε)
        adv = adv / (r.std(1, keepdim=True) + eps)
    return adv.masked_fill(same, 0.0).flatten()


def grpo_policy_loss(
    logprobs, old_logprobs, ref_logprobs, advantages, mask, clip_coef, beta, constant=0
):
    """GRPO's loss (Shao et al. 2024, eq. 3): the clipped surrogate plus a k3 KL term per token,

    ℓ_t = −min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε) Â_t) + β k3_t,   ρ_t = π/π_old,
    L = mean_i (1/|y_i|) Σ_t ℓ_{i,t}        (per response, then over responses), or
    L = Σ_i Σ_t ℓ_{i,t} / constant          (Dr. GRPO, Liu et al. 2025: constant > 0).

    GRPO's per-response mean gives each token of a short response more weight than one of a
    long response (a length bias); Dr. GRPO's constant does not. Also returns the clip
    fraction and approx. KL(π_old‖π), as token_policy_loss does."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    # −min(ρ Â, clip(ρ) Â) = max(−ρ Â, −clip(ρ) Â)
    surrogate = torch.max(
        -advantages * ratio, -advantages * ratio.clamp(1 - clip_coef, 1 + clip_coef)
    )
    # ℓ_t = surrogate_t + β k3_t
    losses = (surrogate + beta * kl_estimators(logprobs, ref_logprobs)[2]) * mask
    if constant > 0:
        # L = Σ_i Σ_t ℓ_{i,t} / constant
        loss = losses.sum() / constant
    else:
        # L = mean_i (1/|y_i|) Σ_t ℓ_{i,t}
        loss = (losses.sum(1) / mask.sum(1)).mean()
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
    enc = tokenizer(
        list(prompts), return_tensors="pt", padding=True, padding_side="left",
        add_special_tokens=False,
    )  # fmt: skip
    queries, query_mask = enc.input_ids.to(device), enc.attention_mask.to(device)
    # generate() derives position ids from the attention mask, as positions_from_mask does
    out = policy.generate(
        input_ids=queries,
        attention_mask=query_mask,
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True,
        output_scores=scores,
    )
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
        batch = prompts[i : i + args.rollout_batch_size]
        _, _, r, m, _ = generate_responses(
            policy, tokenizer, batch, args.max_new_tokens, args.temperature
        )
        texts += decode_responses(tokenizer, r, m)[0]
    return texts


class ValueModel(nn.Module):
    """V(s_t) at every token: a GPT-2 trunk and a scalar head, a network of its own that
    starts as a copy of the reward model.

    Separate rather than a second head on the policy (as in Ouyang et al. 2022 and Huang et
    al. 2024): the value loss cannot then drag the policy's features, and a copy of the RM
    predicts the final score from the first iteration instead of from noise. The price is
    a second forward/backward pass per minibatch."""

    def __init__(self, reward_model):
        super().__init__()
        self.backbone = copy.deepcopy(reward_model.backbone)
        self.head = copy.deepcopy(reward_model.head)

    def forward(self, input_ids, attention_mask):
        hidden = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions_from_mask(attention_mask),
        ).last_hidden_state
        return self.head(hidden).squeeze(-1).float()


def response_values(value_model, queries, query_mask, responses, response_mask):
    """V(s_t) for each response token t, read where the policy's logits for token t are."""
    ids = torch.cat([queries, responses], 1)
    mask = torch.cat([query_mask, response_mask], 1)
    return value_model(ids, mask)[:, queries.shape[1] - 1 : -1]


def progress(stage, done, total, start, **metrics):
    """One readable progress line: stage, step, percent, elapsed seconds, metrics."""
    shown = "  ".join(f"{k} {v:.3g}" for k, v in metrics.items())
    width = len(str(total))
    print(
        f"[{stage}] {done:>{width}}/{total} {100 * done // total:3d}%  "
        f"{time.time() - start:6.1f}s  {shown}",
        flush=True,
    )


def save_pretrained_atomic(model, tokenizer, path):
    """model.save_pretrained and tokenizer.save_pretrained into one directory, atomically
    (save_dir_atomic): never a half-written model."""

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    save_dir_atomic(path, write)


@torch.no_grad()
def collect_rollout(policy, reference, reward_model, rm_tokenizer, tokenizer, prompts, args):
    """Sample one response per prompt and score it: the tensors PPO needs, and the metrics.
    A prompt repeated k times in `prompts` gets k responses from the same generate() call.

    The RM reads the response re-encoded from its text (the form it was trained on, EOS
    appended), so an RM from reward_model.py scores PPO samples as it scored its data;
    reward_model None means the gold score is the reward (--reward gold). The KL of a
    response is sum_t (log pi(a_t) - log pi_ref(a_t)): the k1 estimate of KL(pi || pi_ref)
    in nats per response, the quantity the KL penalty and target use."""
    q, qm, r, m, _ = generate_responses(
        policy, tokenizer, prompts, args.max_new_tokens, args.temperature
    )
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
    stats = {
        "gold": float(gold.mean()),
        "rm_score": scores.mean().item(),
        "kl": (logp - ref_logp).sum(1).mean().item(),
        "entropy": masked_mean(token_entropy(logits, args.temperature), m).item(),
        "well_formed": float(np.mean(well_formed)),
        "length": m.sum(1).float().mean().item(),
    }
    return roll, stats


def evaluate_lm_policy(policy, reference, reward_model, rm_tokenizer, tokenizer, prompts, args):
    """Mean rollout metrics over --eval-samples responses (the same prompts at every call)."""
    rng = random.Random(args.seed + 1)
    chosen = [rng.choice(prompts) for _ in range(args.eval_samples)]
    n, parts, weights = args.rollout_batch_size, [], []
    for i in range(0, len(chosen), n):
        models = (policy, reference, reward_model, rm_tokenizer, tokenizer)
        parts.append(collect_rollout(*models, chosen[i : i + n], args)[1])
        weights.append(len(chosen[i : i + n]))
    keys = ["gold", "rm_score", "kl", "well_formed", "length"]
    return {k: float(np.average([p[k] for p in parts], weights=weights)) for k in keys}


SFT_HINT = "nothing of it was saved; lower --sft-lr or --max-grad-norm, or raise --adam-eps"


def stage_sft(args, policy, tokenizer, demos, writer):
    """Stage 1: cross-entropy on the response tokens (and EOS) of the demonstrations."""
    device = next(policy.parameters()).device
    world_size = world()[1]
    train_model = data_parallel(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=args.sft_lr, eps=args.adam_eps)
    total = args.sft_epochs * math.ceil(len(demos) / args.sft_batch_size)
    step, start = 0, time.time()
    for rows in my_batches(demos, args.sft_batch_size, args.sft_epochs):
        ids, mask, resp = encode(
            tokenizer, [x["prompt"] for x in rows], [x["response"] for x in rows],
            policy.config.n_positions,
        )  # fmt: skip
        ids, mask, resp = ids.to(device), mask.to(device), resp.to(device)
        out = train_model(
            input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask)
        )
        loss = sft_loss(out.logits, ids, resp)
        if world_size > 1:  # the token mean over the global batch
            loss = loss * token_share(resp[:, 1:])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[sft] non-finite loss at step {step}; {SFT_HINT}")
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
        optimizer.step()
        step += 1
        writer.add_scalar("sft/loss", loss.item(), step)
        if step % max(1, total // 5) == 0 or step == total:
            progress("sft", step, total, start, loss=loss.item())
    require_finite(policy, "[sft] the SFT policy", SFT_HINT)


RM_HINT = "it was not saved; lower --rm-lr"


def stage_reward_model(args, policy, tokenizer, prompts, pairs, writer, rng):
    """Stage 2: a Bradley-Terry RM whose trunk starts as a copy of the SFT model, trained on
    `pairs` ({prompt, chosen, rejected}), or if there are none on pairs of SFT samples for
    one prompt ordered by the simulated annotators."""
    device = next(policy.parameters()).device
    rank, world_size = world()
    if not pairs:
        batch = [prompts[i] for i in rng.integers(len(prompts), size=args.rm_pairs)]
        # each rank samples its block; every rank then holds the whole global batch
        mine = [batch[i] for i in my_share(len(batch))]
        a, b = (
            all_gather_list(sample_texts(policy, tokenizer, mine, args)),
            all_gather_list(sample_texts(policy, tokenizer, mine, args)),
        )
        first = annotator_prefers_first(
            rng, gold_scores(a), gold_scores(b), args.annotator_temperature
        )
        pairs = [
            {"prompt": p, "chosen": x if f else y, "rejected": y if f else x}
            for p, x, y, f in zip(batch, a, b, first, strict=True)
        ]
    reward_model = RewardModel(copy.deepcopy(policy.transformer)).to(device).eval()
    train_model = data_parallel(reward_model)
    optimizer = torch.optim.Adam(reward_model.parameters(), lr=args.rm_lr, eps=args.adam_eps)
    total = args.rm_epochs * math.ceil(len(pairs) / args.rm_batch_size)
    step, start = 0, time.time()
    for rows in my_batches(pairs, args.rm_batch_size, args.rm_epochs):
        # chosen and rejected in one forward pass: rows [0, n) and [n, 2n)
        ids, mask, _ = encode(
            tokenizer, [x["prompt"] for x in rows] * 2,
            [x["chosen"] for x in rows] + [x["rejected"] for x in rows],
            policy.config.n_positions,
        )  # fmt: skip
        r_chosen, r_rejected = train_model(ids.to(device), mask.to(device)).chunk(2)
        loss = bradley_terry_loss(r_chosen, r_rejected)
        if world_size > 1:  # the mean over the pairs of the global batch
            loss = loss * token_share(torch.ones(len(rows)))
        if not torch.isfinite(loss):
            raise FloatingPointError(f"[rm] non-finite loss at step {step}; {RM_HINT}")
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(reward_model.parameters(), args.max_grad_norm)
        optimizer.step()
        step += 1
        acc = (r_chosen > r_rejected).float().mean().item()
        writer.add_scalar("rm/loss", loss.item(), step)
        writer.add_scalar("rm/accuracy", acc, step)
        if step % max(1, total // 5) == 0 or step == total:
            progress("rm", step, total, start, loss=loss.item(), acc=acc)
    require_finite(reward_model, "[rm] the reward model", RM_HINT)
    return reward_model


def normalize_reward_model(args, policy, tokenizer, reward_model, rm_tokenizer, prompts, rng):
    """Normalise the RM in place so that its scores of --eval-samples SFT samples have mean 0
    and std 1: r ← (r − μ) / σ. The KL coefficient and the value clip are then on a known
    scale (Ziegler et al. 2019). Under torchrun each rank samples its block of the prompts,
    and μ and σ are those of the scores of all ranks."""
    reference_prompts = [prompts[i] for i in rng.integers(len(prompts), size=args.eval_samples)]
    reference_prompts = [reference_prompts[i] for i in my_share(len(reference_prompts))]
    sft_texts = sample_texts(policy, tokenizer, reference_prompts, args)
    try:
        mean, std = reward_model.normalize_(
            all_gather_cat(score(reward_model, rm_tokenizer, reference_prompts, sft_texts))
        )
    except FloatingPointError as e:
        hint = f"{RM_HINT} or raise --eval-samples"
        hint = "check --reward-model-path" if args.reward_model_path else hint
        raise FloatingPointError(f"[rm] {e}; {hint}") from None
    print(f"[rm] normalised on {len(sft_texts)} SFT samples (mean {mean:.3f}, std {std:.3f})")


@torch.no_grad()
def algo_advantages(args, roll, value_model, beta, k):
    """Â for every response token of a rollout, by --algo (and, for ppo, the values and the
    returns the value loss needs): PPO's token GAE over KL-shaped rewards, whitened over the
    global batch; RLOO's leave-one-out baseline on a KL-penalised sequence reward; GRPO's
    (Dr. GRPO's) group baseline, the same Â on every token of a response."""
    m = roll["m"]
    # a response cut at --max-new-tokens never ended: a fixed penalty on its score
    scores = roll["scores"] - args.no_eos_penalty * (~roll["ended"]).float()
    if args.algo == "ppo":
        values = response_values(value_model, roll["q"], roll["qm"], roll["r"], m) * m
        rewards = kl_shaped_rewards(scores, roll["logp"], roll["ref_logp"], m, beta)
        adv, returns = token_gae(rewards, values, m, args.gamma, args.gae_lambda)
        # whitened over all response tokens of the batch, after the returns are made
        return {"adv": global_masked_whiten(adv, m), "values": values, "returns": returns}
    if args.algo == "rloo":
        # R = r_φ(x, y) − β Σ_t (log π − log π_ref): the KL (k1) in the sequence reward
        seq_reward = scores - beta * (roll["logp"] - roll["ref_logp"]).sum(1)
        return {"adv": rloo_advantages(seq_reward, k)[:, None] * m}
    # the KL is a loss term (ppo_update), not part of the reward
    return {"adv": group_advantages(scores, k, args.algo == "grpo")[:, None] * m}


def ppo_update(args, policy, value_model, optimizer, batch, beta=0.0):
    """--ppo-epochs passes of shuffled minibatches over one rollout batch, for every --algo:
    the clipped surrogate with token-mean aggregation and, for PPO, the value loss (ppo,
    rloo); or GRPO's loss with its k3 KL term, weighted by beta (grpo, dr_grpo;
    value_model is None for the critic-free algorithms). Returns the mean losses and
    statistics, and the largest |rho - 1| of the very first minibatch, which must be ~0:
    otherwise the forward pass does not reproduce the rollout (dropout on, temperature or
    position ids differ; Huang et al. 2023)."""
    q, qm, r, m = batch["q"], batch["qm"], batch["r"], batch["m"]
    stats, first_ratio_dev = [], None
    world_size = world()[1]  # --minibatch-size is global: each rank holds 1/W of it
    for _ in range(args.ppo_epochs):
        for mb in torch.randperm(len(r)).split(args.minibatch_size // world_size):
            logits = sequence_logits(policy, q[mb], qm[mb], r[mb], m[mb])
            logp = token_logprobs(logits, r[mb], args.temperature)
            if first_ratio_dev is None:
                first_ratio_dev = (
                    (((logp - batch["logp"][mb]).exp() - 1) * m[mb]).abs().max().item()
                )
            if args.algo in ("ppo", "rloo"):
                pg_loss, clipfrac, approx_kl = token_policy_loss(
                    logp, batch["logp"][mb], batch["adv"][mb], m[mb], args.clip_coef
                )
            else:
                # Dr. GRPO's constant: the most tokens a minibatch can hold
                constant = len(mb) * args.max_new_tokens if args.algo == "dr_grpo" else 0
                pg_loss, clipfrac, approx_kl = grpo_policy_loss(
                    logp, batch["logp"][mb], batch["ref_logp"][mb], batch["adv"][mb], m[mb],
                    args.clip_coef, beta, constant,
                )  # fmt: skip
            if world_size > 1 and args.algo in ("ppo", "rloo"):
                # token means over the global minibatch (GRPO's per-response means and Dr.
                # GRPO's constant already average right: every rank holds as many responses)
                pg_loss = pg_loss * token_share(m[mb])
            if value_model is None:
                loss, v_loss = pg_loss, torch.zeros(())
            else:
                values = response_values(value_model, q[mb], qm[mb], r[mb], m[mb])
                v_loss = token_value_loss(
                    values, batch["values"][mb], batch["returns"][mb], m[mb], args.value_clip
                )
                if world_size > 1:
                    v_loss = v_loss * token_share(m[mb])
                # No value-loss weight: the two networks share no parameters, and Adam's step
                # does not depend on the scale of the gradient, so a weight would cancel out.
                loss = pg_loss + v_loss
            if not torch.isfinite(loss):  # before the first step, the rollout is at fault
                raise FloatingPointError(
                    f"non-finite {args.algo} loss; lower --learning-rate" if stats else
                    f"non-finite {args.algo} loss before any update: the rewards overflow; "
                    "lower --no-eos-penalty, --init-kl-coef or --loss-kl-coef"
                )  # fmt: skip
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), args.max_grad_norm)
            if value_model is not None:
                nn.utils.clip_grad_norm_(value_model.parameters(), args.max_grad_norm)
            optimizer.step()
            stats.append([pg_loss.item(), v_loss.item(), clipfrac.item(), approx_kl.item()])
    pg, vl, cf, ak = np.mean(stats, 0).tolist()
    out = {"pg_loss": pg, "value_loss": vl, "clipfrac": cf, "approx_kl": ak,
           "ratio_dev_first_mb": first_ratio_dev}  # fmt: skip
    if value_model is None:
        del out["value_loss"]
    return out


def stage_rl(args, models, value_model, prompts, rng, writer, out_dir):
    """Stage 3: --ppo-iterations of rollout → advantages (by --algo) → update → log, starting
    from the SFT policy with π_ref frozen. Under torchrun each rank samples its share of the
    prompt groups, and the KL controller and the logs see the statistics of the global batch.
    Returns the final β and the seconds of each iteration."""
    policy, rank, world_size = models[0], *world()
    trained = [*policy.parameters(), *(value_model.parameters() if value_model else [])]
    optimizer = torch.optim.Adam(trained, lr=args.learning_rate, eps=args.adam_eps)
    # under torchrun the update's forward passes go through DDP (the reference and the RM
    # need no gradients: never wrapped); rollouts and saving use the plain modules. The DDP
    # wrappers are freed on return, while every rank is still in the process group.
    train_policy = data_parallel(policy)
    train_value = data_parallel(value_model) if value_model is not None else None
    k = responses_per_prompt(args)
    # β weighs a KL penalty in the reward (ppo, rloo) or a KL term in the loss (grpo, dr_grpo):
    # two scales, two starting values; one controller adapts either
    beta = args.init_kl_coef if args.algo in ("ppo", "rloo") else args.loss_kl_coef
    start, iteration_s = time.time(), []
    shown = ["gold", "rm_score", "kl", "beta", "well_formed", "entropy", "clipfrac",
             "approx_kl", "value_loss", "length"]  # fmt: skip
    csv_path = os.path.join(out_dir, f"{args.algo}_metrics.csv") if rank == 0 else os.devnull
    with open(csv_path, "w") as csv:
        for it in range(1, args.ppo_iterations + 1):
            t_it = time.time()
            # k consecutive copies of each prompt: its group of k responses
            chosen = rng.integers(len(prompts), size=args.rollout_batch_size // k)
            chosen = chosen[my_share(len(chosen))]  # this rank's groups (all of them, alone)
            batch_prompts = [prompts[i] for i in np.repeat(chosen, k)]
            roll, stats = collect_rollout(*models, batch_prompts, args)
            roll |= algo_advantages(args, roll, value_model, beta, k)
            try:
                stats |= ppo_update(args, train_policy, train_value, optimizer, roll, beta)
                for net in (policy, value_model or policy):  # the last step's update too
                    require_finite(net, "the updated model", "lower --learning-rate")
            except FloatingPointError as e:
                raise FloatingPointError(
                    f"{e} ({args.algo} iteration {it}); SFT and RM are saved in {out_dir}"
                ) from None
            stats = global_mean(stats)  # the controller and the logs see the global batch
            stats["beta"] = beta
            beta = adaptive_kl_coef(
                beta, stats["kl"], args.kl_target, len(roll["r"]) * world_size, args.kl_horizon
            )
            iteration_s.append(time.time() - t_it)
            for key, v in stats.items():
                writer.add_scalar(f"{args.algo}/{key}", v, it)
            if it == 1:
                csv.write("iteration," + ",".join(stats) + "\n")
            csv.write(f"{it}," + ",".join(f"{v:.6g}" for v in stats.values()) + "\n")
            csv.flush()
            progress(
                args.algo, it, args.ppo_iterations, start,
                **{key: stats[key] for key in shown if key in stats},
            )  # fmt: skip
            if args.sample_every and (it % args.sample_every == 0 or it == 1):
                for p, t, s in list(
                    zip(batch_prompts, roll["texts"], roll["scores"].tolist(), strict=True)
                )[:3]:
                    print(f"    {p + t!r}  gold {gold_scores([t])[0]:+.2f}  {args.reward} {s:+.2f}")
    return beta, iteration_s


def responses_per_prompt(args):
    """k of --samples-per-prompt; 0 = automatic: 1 for PPO, 4 for the group baselines."""
    return args.samples_per_prompt or (1 if args.algo == "ppo" else 4)


def check_world_size(args, world_size):
    """ValueError unless the global batch sizes split evenly across the torchrun ranks."""
    k = responses_per_prompt(args)
    for name, unit in [("rollout_batch_size", k), ("minibatch_size", 1),
                       ("sft_batch_size", 1), ("rm_batch_size", 1)]:  # fmt: skip
        if getattr(args, name) % (unit * world_size):
            what = f"{world_size} ranks" + (f" x {k} samples per prompt" if unit > 1 else "")
            raise ValueError(
                f"--{name.replace('_', '-')} {getattr(args, name)} does not divide across "
                f"{what}; it is a global batch size"
            )


def check_rlhf_args(args):
    """ValueError, saying what to fix, for flags that would fail later or do nothing."""
    if args.algo not in ("ppo", "rloo", "grpo", "dr_grpo"):
        raise ValueError(f"--algo must be ppo, rloo, grpo or dr_grpo, not {args.algo!r}")
    if args.reward not in ("rm", "gold"):
        raise ValueError(f"--reward must be rm or gold, not {args.reward!r}")
    counts = ("sft_demos", "sft_batch_size", "rm_pairs", "rm_batch_size", "rollout_batch_size",
              "minibatch_size", "ppo_epochs", "max_new_tokens", "kl_horizon")  # fmt: skip
    check_flags(args, positive=(*counts, "sft_lr", "rm_lr", "learning_rate", "adam_eps",
                                "temperature", "max_grad_norm"),
                nonneg=("threads", "sft_epochs", "rm_epochs", "ppo_iterations", "sample_every",
                        "samples_per_prompt", "annotator_temperature", "clip_coef", "value_clip",
                        "init_kl_coef", "loss_kl_coef", "kl_target", "no_eos_penalty"),
                unit=("gamma", "gae_lambda"))  # fmt: skip
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), not {args.seed}")
    # Adam moves each weight by about its step size per step: beyond 1, more than the weights.
    for name in ("sft_lr", "rm_lr", "learning_rate"):
        if getattr(args, name) > 1:
            raise ValueError(f"--{name.replace('_', '-')} must be <= 1, not {getattr(args, name)}")
    if args.threads > os.cpu_count():
        raise ValueError(f"--threads {args.threads}: this machine has {os.cpu_count()} CPUs")
    k = responses_per_prompt(args)
    if args.algo != "ppo" and k < 2:
        raise ValueError(f"--algo {args.algo} needs --samples-per-prompt >= 2 (a group baseline)")
    if args.algo == "ppo" and args.rollout_batch_size < 2:
        raise ValueError("--algo ppo whitens the advantages with their variance over the "
                         "rollout's tokens, which needs --rollout-batch-size >= 2")  # fmt: skip
    if args.rollout_batch_size % k:
        raise ValueError(
            f"--rollout-batch-size {args.rollout_batch_size} must be a multiple of "
            f"--samples-per-prompt {k}"
        )
    if args.minibatch_size > args.rollout_batch_size:
        raise ValueError("--minibatch-size must be <= --rollout-batch-size")
    if args.eval_samples < 2:
        raise ValueError("--eval-samples must be >= 2 (the RM is normalised on their std)")
    if args.preference_data == "" and args.rm_pairs < 2:
        raise ValueError("need --rm-pairs >= 2 for the built-in task")
    # The built-in demonstrations, pairs and evaluation prompts: about 1 KiB a text.
    check_memory(1024 * (args.sft_demos + 2 * args.rm_pairs + args.eval_samples),
                 "--sft-demos, --rm-pairs and --eval-samples")  # fmt: skip


def check_context_and_memory(args, config, tokenizer, prompts, demos, pairs):
    """ValueError if a prompt and --max-new-tokens do not fit in the model's positions (no
    prompt is cut: the policy would answer another question), or if the largest batch (SFT,
    RM or rollout, at its longest) would not fit in memory."""
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    longest = int(np.argmax(lengths))
    if lengths[longest] + args.max_new_tokens > config.n_positions:
        raise ValueError(
            f"{args.sft_data or 'the built-in prompts'}: the prompt {prompts[longest][:40]!r} "
            f"is {lengths[longest]} tokens; with --max-new-tokens {args.max_new_tokens} that "
            f"exceeds the {config.n_positions} positions of {args.model_name}; shorten it or "
            "lower --max-new-tokens"
        )
    if min(lengths) == 0:  # a prompt of only whitespace the tokenizer drops, say
        raise ValueError(f"{args.sft_data}: a prompt encodes to no tokens at all")

    def tokens(texts):  # in the longest text, with EOS, as encode() cuts it
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        return min(config.n_positions, 1 + max(map(len, ids)))

    rollout = args.max_new_tokens + max(lengths)  # tokens, prompt included
    rm_texts = [p["prompt"] + p[k] for p in pairs for k in ("chosen", "rejected")]
    rm_len = tokens(rm_texts) if pairs else rollout  # without pairs, the RM scores samples
    check_memory(max(
        activation_bytes(config, min(args.sft_batch_size, len(demos)),
                         tokens([d["prompt"] + d["response"] for d in demos])),
        activation_bytes(config, 2 * min(args.rm_batch_size, len(pairs) or args.rm_pairs), rm_len),
        activation_bytes(config, args.rollout_batch_size, rollout),
    ), "--sft-batch-size, --rm-batch-size or --rollout-batch-size")  # fmt: skip


def train(args):
    try:  # under torchrun every rank checks the same flags: rank 0 alone says what is wrong
        check_rlhf_args(args)
        check_world_size(args, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        if int(os.environ.get("RANK", "0")) > 0:
            sys.exit(1)
        raise
    cuda = args.cuda and torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        # started by torchrun: one process per device (or per CPU share), PyTorch's own DDP
        if cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo")
    rank, world_size = world()
    task = os.path.basename(args.sft_data) if args.sft_data else "movie-reviews"
    run_name = f"{task}__rlhf_ppo_gpt2__{args.seed}__{int(time.time())}"
    out_dir = args.output_dir or os.path.join("runs", run_name)
    outputs = ("policy", "reward_model", "sft", "*_metrics.csv", "events.out.tfevents.*")
    stale = earlier_outputs(out_dir, args.overwrite, outputs)
    if rank > 0:
        sys.stdout = open(os.devnull, "w")  # rank 0 alone prints, logs and saves
    reward_model = rm_tokenizer = None  # loaded before the seeds: its head's init draws
    if args.reward == "rm" and args.reward_model_path:
        reward_model, rm_tokenizer = RewardModel.load(args.reward_model_path)
    random.seed(args.seed)
    np.random.seed(args.seed)  # numpy's draws (prompts, annotators) are the same on every rank
    # torch's are not: each rank samples other responses (rank 0 draws what one process would)
    torch.manual_seed(args.seed + 1000 * rank)
    # A tiny GPT-2's matmuls are too small to split across threads; on a busy 2-core machine
    # one thread was 16x faster than two (measured here).
    torch.set_num_threads(
        args.threads or (1 if args.model_name == "tiny" else torch.get_num_threads())
    )
    hf_logging.disable_progress_bar()  # save_pretrained's tqdm bar would interleave with ours
    rng = np.random.default_rng(args.seed)
    t_start = time.time()

    # Every input is read and checked before anything is written: a bad file or flag should
    # stop the run before, not after, SFT.
    if args.sft_data:
        demos = read_jsonl(args.sft_data, ["prompt", "response"], nonempty=["prompt"])
    else:
        demos = builtin_demonstrations(rng, args.sft_demos)
    pairs = []
    if args.preference_data and not args.reward_model_path:
        pairs = read_jsonl(args.preference_data, ["prompt", "chosen", "rejected"],
                           pair=["chosen", "rejected"])  # fmt: skip
    policy, tokenizer = load_gpt2(GPT2LMHeadModel, args.model_name)
    policy = policy.to(device).eval()
    if rm_tokenizer is not None and rm_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError(
            f"{args.reward_model_path}: the RM has another tokenizer than --model-name "
            f"{args.model_name}; train it with reward_model.py --model-name {args.model_name}"
        )
    prompts = sorted({d["prompt"] for d in demos})
    check_context_and_memory(args, policy.config, tokenizer, prompts, demos, pairs)
    if world_size > 1:
        dist.barrier()  # every rank has checked --output-dir before rank 0 writes to it
    writer = NullWriter()
    if rank == 0:
        make_output_dir(out_dir, stale)
        threading.excepthook = quiet_tensorboard_thread
        writer = SummaryWriter(out_dir)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))

    # Stage 1: SFT. Every model stays in eval mode for the whole run: GPT-2's only train-mode
    # behaviour is dropout (also zeroed in the config), which would make rho != 1 at the start.
    print(f"[sft] {len(demos)} demonstrations, {len(prompts)} prompts, {args.model_name}, {device}")
    stage_sft(args, policy, tokenizer, demos, writer)
    if rank == 0:
        with signals_held():  # Ctrl-C or SIGTERM waits until the model is complete
            save_pretrained_atomic(policy, tokenizer, os.path.join(out_dir, "sft"))
    t_sft = time.time()

    # Stage 2: RM, normalised on SFT samples. --reward gold needs no RM: the task's own scorer
    # is the reward, as with checkable answers.
    if args.reward == "gold":
        rm_tokenizer = tokenizer
        print("[rm] --reward gold: no reward model; stage 3 is rewarded with the gold score")
    elif reward_model is None:
        reward_model = stage_reward_model(args, policy, tokenizer, prompts, pairs, writer, rng)
        rm_tokenizer = tokenizer
    if reward_model is not None:
        reward_model = reward_model.to(device).eval().requires_grad_(False)
        normalize_reward_model(args, policy, tokenizer, reward_model, rm_tokenizer, prompts, rng)
        if rank == 0:
            with signals_held():
                reward_model.save(os.path.join(out_dir, "reward_model"), rm_tokenizer)
    t_rm = time.time()

    # Stage 3. pi_ref is a frozen copy of the SFT policy. PPO's V is a copy of the RM (of the
    # SFT trunk with a fresh head under --reward gold); the critic-free algorithms have none.
    reference = copy.deepcopy(policy).requires_grad_(False)
    value_model = None
    if args.algo == "ppo":
        value_model = ValueModel(
            reward_model if reward_model is not None else RewardModel(policy.transformer)
        )
        value_model = value_model.to(device).requires_grad_(True)
    held = [policy, reference, reward_model, value_model]
    stage3_params = sum(p.numel() for x in held if x is not None for p in x.parameters())
    n_trained = sum(
        p.numel() for x in (policy, value_model) if x is not None for p in x.parameters()
    )
    # parameters of every stage-3 model, plus a gradient and Adam's two moments per trained one
    stage3_state_mb = 4 * (stage3_params + 3 * n_trained) / 2**20
    models = (policy, reference, reward_model, rm_tokenizer, tokenizer)
    sft_eval = evaluate_lm_policy(*models, prompts, args) if rank == 0 else {}
    print(f"[{args.algo}] SFT policy:   " + "  ".join(f"{k} {v:.3f}" for k, v in sft_eval.items()))
    beta, iteration_s = stage_rl(args, models, value_model, prompts, rng, writer, out_dir)
    if rank == 0:
        with signals_held():
            save_pretrained_atomic(policy, tokenizer, os.path.join(out_dir, "policy"))
    t_ppo = time.time()
    if world_size > 1:
        # DDP's reducers hold the process group: stage_rl() dropped them while every rank was
        # still here; now leave together (a reducer freed after destroy_process_group can
        # hang in gloo's teardown once the other ranks have exited; seen here)
        dist.barrier()
        dist.destroy_process_group()  # the other ranks are done; rank 0 evaluates alone
    if rank > 0:
        return {}
    final_eval = evaluate_lm_policy(*models, prompts, args)
    print(
        f"[{args.algo}] final policy: " + "  ".join(f"{k} {v:.3f}" for k, v in final_eval.items())
    )
    writer.close()
    summary = {"algo": f"rlhf_{args.algo}", "task": task, "model_name": args.model_name}
    summary |= {"seed": args.seed, "reward": args.reward}
    summary["samples_per_prompt"] = responses_per_prompt(args)
    summary |= {f"sft_{k}": v for k, v in sft_eval.items()}
    summary |= {f"final_{k}": v for k, v in final_eval.items()}
    summary |= {
        "kl_target": args.kl_target,
        "final_beta": beta,
        "sft_time_s": round(t_sft - t_start, 2),
        "rm_time_s": round(t_rm - t_sft, 2),
        "ppo_time_s": round(t_ppo - t_rm, 2),
        # the rollout-and-update loop alone, without the evaluations
        "iteration_s": round(float(np.mean(iteration_s)), 4) if iteration_s else 0.0,
        "stage3_params": stage3_params,
        "stage3_state_mb": round(stage3_state_mb, 2),
        "wall_time_s": round(time.time() - t_start, 2),
        "output_dir": out_dir,
    }
    return summary


def main(argv=None):
    """Run train(), print its summary as the last stdout line. Bad input, a failed save and an
    interrupt each end with one line on stderr and a non-zero exit."""
    # SIGTERM (sent by `timeout`, job schedulers, `docker stop`) becomes the KeyboardInterrupt
    # of a Ctrl-C, so the same finally-blocks save the last good state before exiting.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        summary = train(parse_args(argv))
    except (ValueError, OSError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print("error: interrupted; files saved before the interrupt are kept", file=sys.stderr)
        sys.exit(130)
    # NaN and inf are not JSON: a summary line must stay parseable whatever the run produced.
    summary = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in summary.items()}  # fmt: skip
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
