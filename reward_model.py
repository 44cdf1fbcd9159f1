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
import contextlib
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
    import torch.nn as nn
    import torch.nn.functional as F
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoTokenizer, GPT2Config, GPT2Model, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging
except KeyboardInterrupt:
    sys.exit("error: interrupted while starting up; nothing was written")


def flag(default, help):
    """A dataclass field that is also a command-line flag with help text."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class Args:
    seed: int = flag(1, "seed of random, numpy, torch and the built-in task")
    cuda: bool = flag(True, "use CUDA when it is available")
    output_dir: str = flag("", "logs and the reward model go here; default runs/<run-name>")
    overwrite: bool = flag(False, "replace the files of an earlier run in --output-dir")
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
    epochs: int = flag(3, "passes over the training pairs")
    batch_size: int = flag(32, "preference pairs per gradient step")
    learning_rate: float = flag(0.0, "AdamW step size; 0 = 3e-3 for tiny, 1e-5 for pretrained")
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


def pair_accuracies(r_chosen, r_rejected, gold_chosen=None, gold_rejected=None):
    """Held-out accuracies of the reward model r:

        label accuracy = mean 1[r(x, y_c) > r(x, y_r)]  (agreement with the annotators)
        gold accuracy  = mean over pairs with g_c ≠ g_r of 1[(r_c > r_r) = (g_c > g_r)]

    Gold ties carry no order and are left out; None without gold scores.
    """
    # 1[r_c > r_r]
    right = (np.asarray(r_chosen) > np.asarray(r_rejected)).astype(float)
    if gold_chosen is None:
        return right.mean(), None
    g_c, g_r = np.asarray(gold_chosen), np.asarray(gold_rejected)
    ordered = g_c != g_r
    # 1[(r_c > r_r) = (g_c > g_r)] on the pairs whose gold scores differ
    gold = (right.astype(bool) == (g_c > g_r))[ordered]
    return right.mean(), (gold.mean() if len(gold) else None)


def length_grouped_batches(rng, lengths, batch_size, pool=16):
    """Index batches for one epoch: shuffle, sort by length within pools of `pool` batches,
    then shuffle the batch order. A batch pads to the longest of similar lengths, which
    saves about a third of the tokens on the built-in task; each pool is still a random
    sample, so the batches stay close to i.i.d.
    """
    order = rng.permutation(len(lengths))
    batches = []
    for i in range(0, len(order), pool * batch_size):
        chunk = order[i : i + pool * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def adamw_lr(args):
    """--learning-rate, or for 0 the default: 3e-3 for the tiny model, 1e-5 for pretrained."""
    return args.learning_rate or (3e-3 if args.model_name == "tiny" else 1e-5)


def check_rm_args(args):
    """Refuse flag values that cannot work, with a message that says what to fix."""
    if args.model_name == "":
        raise ValueError("--model-name is empty; use gpt2, tiny or a local model directory")
    check_flags(args, positive=("epochs", "batch_size", "num_pairs", "num_reference",
                                "label_pairs", "max_grad_norm"),
                nonneg=("annotator_temperature", "learning_rate", "weight_decay"))  # fmt: skip
    if not 0 < args.eval_fraction < 1:
        raise ValueError(f"--eval-fraction must be in (0, 1), got {args.eval_fraction}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be in [0, 2**32), not {args.seed}")
    # AdamW moves each weight by about lr per step and shrinks it by the fraction lr x decay:
    # beyond 1 either destroys the weights it should refine.
    lr = adamw_lr(args)
    if max(lr, lr * args.weight_decay) > 1:
        raise ValueError(f"--learning-rate {lr:g} and its product with --weight-decay "
                         f"{args.weight_decay:g} must be <= 1")  # fmt: skip
    # The built-in pairs, their tokens and gold scores: about 2 KiB a pair or demonstration.
    check_memory(2048 * (args.num_pairs + args.num_reference + args.label_pairs),
                 "--num-pairs, --num-reference and --label-pairs")  # fmt: skip


def printable(text):
    """`text` with each character that a terminal would act on rather than show (escape
    sequences, carriage returns, bidirectional overrides) written as its Python escape, so
    that data cannot clear or recolour the annotator's screen."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def mend_last_line(path):
    """Make `path` end with a newline before answers are appended to it. A last line without
    one is a whole answer (the newline is added) or one torn by an interrupted write: the torn
    part is moved to path + '.torn', and the user is told."""
    if not os.path.isfile(path):
        return
    with open(path, "rb+") as f:
        data = f.read()
        start = data.rfind(b"\n") + 1
        if start == len(data):
            return
        try:
            json.loads(data[start:])
            f.write(b"\n")
            return
        except (ValueError, RecursionError):
            pass
        with open(path + ".torn", "ab") as torn:
            torn.write(data[start:] + b"\n")
            os.fsync(torn.fileno())
        f.truncate(start)
    print(f"{path}: its last line was torn by an interrupted write; moved it to {path}.torn")


def label_preferences(args):
    """Human labelling: show pairs, append each answer to --label-output at once.

    Every answer is one JSON line, flushed and fsync-ed before the next pair is shown, so
    Ctrl-C, a crash or a power cut loses at most the pair on screen. A rerun skips the pairs
    already answered (in either order of the two responses), and a pair is asked only once.
    """
    start = time.time()
    if sys.stdin is None:
        raise ValueError("--label reads the answers from standard input, which is closed")
    if args.label_input:
        pairs = read_jsonl(args.label_input, ("prompt", "a", "b"), pair=("a", "b"))
    else:
        # A pure function of --seed, so that a resumed session sees the same pairs.
        rng = np.random.default_rng(args.seed)
        demos = builtin_demonstrations(rng, args.label_pairs)
        second = sample_responses(rng, args.label_pairs)
        pairs = [
            {"prompt": d["prompt"], "a": d["response"], "b": b}
            for d, b in zip(demos, second, strict=True)
            if d["response"] != b
        ]
    mend_last_line(args.label_output)
    done = set()
    if os.path.exists(args.label_output) and os.path.getsize(args.label_output) > 0:
        for row in read_jsonl(args.label_output, ("prompt", "chosen", "rejected")):
            done.add((row["prompt"], frozenset((row["chosen"], row["rejected"]))))
    todo, unique = [], set()
    for p in pairs:  # each distinct pair once, unless it was answered before
        key = (p["prompt"], frozenset((p["a"], p["b"])))
        if key not in unique and key not in done:
            todo.append(p)
        unique.add(key)
    print(
        f"{len(unique) - len(todo)} of {len(unique)} pairs already answered in "
        f"{args.label_output}; {len(todo)} to go. Which response is better? 1 or 2; "
        "s = skip, q = quit."
    )
    answered = skipped = 0
    with open(args.label_output, "a", encoding="utf-8") as out:
        for k, p in enumerate(todo, 1):
            prompt, a, b = (printable(p[key]) for key in ("prompt", "a", "b"))
            print(f"\n[{k}/{len(todo)}] {prompt}\n  1: {prompt}{a}")
            print(f"  2: {prompt}{b}")
            answer = ""
            while answer not in ("1", "2", "s", "q"):
                print("better? [1/2/s/q] ", end="", flush=True)
                line = sys.stdin.readline()
                answer = line.strip().lower() if line else "q"  # end of input = quit
            if answer == "q":
                break
            if answer == "s":
                skipped += 1
                continue
            chosen, rejected = (p["a"], p["b"]) if answer == "1" else (p["b"], p["a"])
            row = {"prompt": p["prompt"], "chosen": chosen, "rejected": rejected}
            out.write(json.dumps(row) + "\n")
            out.flush()
            os.fsync(out.fileno())
            answered += 1
    print(f"\n{answered} answers saved to {args.label_output}")
    return {
        "mode": "label",
        "answered": answered,
        "skipped": skipped,
        "answered_total": len(unique) - len(todo) + answered,
        "pairs_total": len(unique),
        "label_output": args.label_output,
        "wall_time_s": round(time.time() - start, 2),
    }


def split_held_out(pairs, rng, eval_fraction):
    """(training pairs, held-out pairs): a random max(1, round(f·n)) of the n pairs are held
    out, at least one is left to train on."""
    perm = rng.permutation(len(pairs))
    n_eval = max(1, round(eval_fraction * len(pairs)))
    if len(pairs) - n_eval < 1:
        raise ValueError(f"{len(pairs)} preference pairs: too few to hold {n_eval} out")
    return [pairs[i] for i in perm[n_eval:]], [pairs[i] for i in perm[:n_eval]]


def reference_responses(args, pairs, rng):
    """The (prompts, responses) whose rewards set the normalisation r ← (r − μ)/σ: on the
    built-in task --num-reference fresh demonstrations (the distribution that SFT imitates);
    on a user's data both responses of every training pair."""
    if args.preference_data:
        prompts = [p["prompt"] for p in pairs] * 2
        return prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    demos = builtin_demonstrations(rng, args.num_reference)
    return [d["prompt"] for d in demos], [d["response"] for d in demos]


def train(args):
    check_rm_args(args)
    if args.label:
        return label_preferences(args)
    start = time.time()
    hf_logging.disable_progress_bar()  # weight loading and saving: no bars in the log
    task = os.path.basename(args.preference_data) if args.preference_data else "builtin-reviews"
    run_name = f"{task}__reward_model__{args.seed}__{int(start)}"
    out = args.output_dir or os.path.join("runs", run_name)
    stale = earlier_outputs(out, args.overwrite, ("reward_model", "events.out.tfevents.*"))

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        # A 137k-parameter model: a second thread buys little, and on a busy machine its
        # spin-waiting costs more than it gives. One thread also fixes the float sums.
        torch.set_num_threads(1)

    # ---- Data: preference pairs, split into train and held-out -------------------------
    if args.preference_data:
        pairs = read_jsonl(
            args.preference_data, ("prompt", "chosen", "rejected"), pair=("chosen", "rejected")
        )
    else:
        pairs = builtin_preferences(rng, args.num_pairs, args.annotator_temperature)
    pairs, held_out = split_held_out(pairs, rng, args.eval_fraction)
    n_eval = len(held_out)
    # Gold scores exist for the built-in task only: VADER is no judge of other data.
    gold = None
    if not args.preference_data:
        gold = (
            gold_scores([p["chosen"] for p in held_out]),
            gold_scores([p["rejected"] for p in held_out]),
        )

    backbone, tokenizer = load_gpt2(GPT2Model, args.model_name)
    model = RewardModel(backbone).to(device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=adamw_lr(args), weight_decay=args.weight_decay
    )
    steps_per_epoch = -(-len(pairs) // args.batch_size)
    # Tokens in the longer sequence of each pair: what the pair's batch is padded to.
    seq_len = [
        np.array([len(ids) for ids in tokenizer([p["prompt"] + p[k] for p in pairs])["input_ids"]])
        for k in ("chosen", "rejected")
    ]
    lengths = np.maximum(*seq_len)
    max_length = backbone.config.n_positions
    check_memory(activation_bytes(backbone.config, 2 * min(args.batch_size, len(pairs)),
                                  min(max_length, lengths.max() + 1)), "--batch-size")  # fmt: skip
    total_steps = args.epochs * steps_per_epoch
    # Linear decay to 0: the last, small steps average out the annotators' label noise.
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / total_steps)

    make_output_dir(out, stale)
    threading.excepthook = quiet_tensorboard_thread
    writer = SummaryWriter(out)
    writer.add_text("args", json.dumps(dataclasses.asdict(args), indent=1))
    print(
        f"reward model on {task}: {len(pairs)} training pairs, {n_eval} held out, "
        f"{args.model_name} ({sum(p.numel() for p in model.parameters()):,} parameters) "
        f"on {device}; logs in {out}"
    )

    def evaluate_held_out():
        prompts = [p["prompt"] for p in held_out]
        r_c = score(model, tokenizer, prompts, [p["chosen"] for p in held_out])
        r_r = score(model, tokenizer, prompts, [p["rejected"] for p in held_out])
        return pair_accuracies(r_c, r_r, *(gold or ()))

    label_acc = gold_acc = None
    step = 0
    t0 = time.time()
    try:  # nothing is saved before the end: say so plainly on Ctrl-C
        for epoch in range(1, args.epochs + 1):
            model.train()  # dropout is off in the config; train() only marks the phase
            for indices in length_grouped_batches(rng, lengths, args.batch_size):
                batch = [pairs[i] for i in indices]
                n = len(batch)
                # Chosen and rejected go through one forward pass: [chosen; rejected].
                ids, mask, _ = encode(
                    tokenizer,
                    [p["prompt"] for p in batch] * 2,
                    [p["chosen"] for p in batch] + [p["rejected"] for p in batch],
                    max_length,
                )
                rewards = model(ids.to(device), mask.to(device))
                loss = bradley_terry_loss(rewards[:n], rewards[n:])
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss at epoch {epoch}, step {step}; nothing was saved; try "
                        "a lower --learning-rate"
                    )
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
                if step % max(1, total_steps // 10) == 0:
                    print(
                        f"[{100 * step // total_steps:3d}%] epoch {epoch} step {step} "
                        f"loss {loss.item():.4f} ({time.time() - t0:.1f}s)"
                    )
            model.eval()
            label_acc, gold_acc = evaluate_held_out()
            writer.add_scalar("eval/label_accuracy", label_acc, step)
            line = f"epoch {epoch}: held-out accuracy vs annotators {label_acc:.3f}"
            if gold_acc is not None:
                writer.add_scalar("eval/gold_accuracy", gold_acc, step)
                line += f", vs gold order {gold_acc:.3f}"
            print(line + f" ({time.time() - t0:.1f}s)")
        train_time = time.time() - t0

        # ---- Normalise: reference responses score mean 0, std 1 -------------------------
        ref_prompts, ref_responses = reference_responses(args, pairs, rng)
        require_finite(model, "the reward model", "nothing was saved; try a lower --learning-rate")
        ref = score(model, tokenizer, ref_prompts, ref_responses)
        raw_mean, raw_std = model.normalize_(ref)
    except KeyboardInterrupt:
        print(f"interrupted before the reward model was saved: {out} keeps only the "
              "TensorBoard logs", file=sys.stderr)  # fmt: skip
        raise
    path = os.path.join(out, "reward_model")
    with signals_held():  # a second Ctrl-C or SIGTERM waits until the model is complete
        model.save(path, tokenizer)
        writer.close()
    print(
        f"normalised (reference rewards had mean {raw_mean:.3f}, std {raw_std:.3f}); "
        f"saved to {path}"
    )
    return {
        "algo": "reward_model",
        "task": task,
        "model_name": args.model_name,
        "seed": args.seed,
        "train_pairs": len(pairs),
        "eval_pairs": n_eval,
        "epochs": args.epochs,
        "eval_label_accuracy": round(float(label_acc), 4),
        "eval_gold_accuracy": None if gold_acc is None else round(float(gold_acc), 4),
        "reference_reward_mean": round(raw_mean, 4),
        "reference_reward_std": round(raw_std, 4),
        "train_time_s": round(train_time, 2),
        "wall_time_s": round(time.time() - start, 2),
        "output_dir": out,
        "reward_model_path": path,
    }


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
