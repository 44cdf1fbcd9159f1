"""Issue 15 for reward_model.py and rlhf_ppo_gpt2.py: every bad input is a one-line `error:`
and a non-zero exit (never a traceback), and no interrupt, failed save or rerun loses a file
that existed before. Cheap by design: validation paths and runs of a few tiny steps, in this
process; two subprocesses (started together) check real signals from outside. Tiny model
only, HF_HUB_OFFLINE=1: nothing reaches the network."""

import dataclasses
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import reward_model as rm  # noqa: E402
import rlhf_ppo_gpt2 as rl  # noqa: E402

RM_BASE = ["--model-name", "tiny", "--no-cuda", "--num-pairs", "16", "--num-reference", "8",
           "--epochs", "1", "--batch-size", "8", "--output-dir", "out"]  # fmt: skip
RL_BASE = ["--model-name", "tiny", "--no-cuda", "--sft-demos", "8", "--sft-epochs", "1",
           "--sft-batch-size", "8", "--rm-pairs", "8", "--rm-epochs", "1", "--rm-batch-size",
           "8", "--ppo-iterations", "1", "--rollout-batch-size", "4", "--minibatch-size", "4",
           "--ppo-epochs", "1", "--eval-samples", "4", "--max-new-tokens", "4",
           "--sample-every", "0", "--output-dir", "out"]  # fmt: skip
BASE = {rm: RM_BASE, rl: RL_BASE}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test in its own directory, offline, with the signal handlers and thread count
    that it found restored (main() points SIGTERM at KeyboardInterrupt). It starts from the
    handlers of a fresh process: in two of three full-suite runs the Ctrl-C test below
    trained to the end, likely because an earlier test's interrupt had left a handler held."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threads, writers = torch.get_num_threads(), []

    class Writer(rl.SummaryWriter):  # a run that fails leaves its writer open: close it here
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            writers.append(self)

    for module in (rm, rl):
        monkeypatch.setattr(module, "SummaryWriter", Writer)
    yield
    for writer in writers:
        writer.close()
    for s, h in handlers.items():
        signal.signal(s, h)
    torch.set_num_threads(threads)


def to_main_thread(sig):
    """The signal to the main thread, which raises at once (why: test_bad_input_rl.py)."""
    signal.pthread_kill(threading.main_thread().ident, sig)


def run_main(module, argv, capsys):
    """module.main(argv) here: (exit code, stdout, the error line, stderr). Any other
    exception, a traceback, fails the test by itself."""
    try:
        module.main(argv)
        code, message = 0, ""
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        message = "" if isinstance(e.code, int) else str(e.code)
    out, err = capsys.readouterr()
    return code, out, message or (err.strip().splitlines() or [""])[-1], err


def assert_error(code, message, *fragments):
    assert code != 0 and message.startswith("error: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def leftovers(root="."):
    return sorted(str(p) for p in Path(root).rglob("*") if p.name.endswith((".tmp", ".old")))


# ---------------------------------------------------------------- every flag x bad values

VALUES = ["0", "-1", "huge", "nan", "inf", "abc"]
# Values that must be accepted (a short run that succeeds); every other value of VALUES must be
# a one-line error naming the flag. "long": a huge count is a legitimate long request, so it
# must pass the flag rules; it is not run. "big": a huge size or step size that breaks no rule
# may fail later, inside the library (memory, overflow), as long as it ends in one line.
RM_ACCEPTS = {
    "seed": {"0"}, "annotator_temperature": {"0", "huge"}, "num_pairs": {"big"},
    "eval_fraction": {"0"}, "num_reference": {"big"}, "epochs": {"long"},
    "batch_size": {"huge"}, "learning_rate": {"0", "big"}, "weight_decay": {"0", "big"},
    "max_grad_norm": {"huge"}, "label_pairs": {"huge"},
}  # fmt: skip
RL_ACCEPTS = {
    "seed": {"0"}, "threads": {"0", "big"}, "annotator_temperature": {"0", "huge"},
    "sft_demos": {"big"}, "sft_epochs": {"0", "long"}, "sft_batch_size": {"huge"},
    "sft_lr": {"big"}, "rm_pairs": {"big"}, "rm_epochs": {"0", "long"},
    "rm_batch_size": {"huge"}, "rm_lr": {"big"}, "samples_per_prompt": {"0"},
    "ppo_iterations": {"0", "long"}, "rollout_batch_size": {"big"}, "minibatch_size": set(),
    "ppo_epochs": {"long"}, "learning_rate": {"big"}, "adam_eps": {"huge"},
    "temperature": {"huge"}, "max_new_tokens": set(), "clip_coef": {"0", "huge"},
    "value_clip": {"0", "huge"}, "max_grad_norm": {"huge"}, "gamma": {"0"}, "gae_lambda": {"0"},
    "init_kl_coef": {"0", "huge"}, "loss_kl_coef": {"0", "huge"}, "kl_target": {"0", "huge"},
    "kl_horizon": {"huge"}, "no_eos_penalty": {"0", "huge"}, "eval_samples": {"big"},
    "sample_every": {"0", "huge"}, "dpo_beta": {"huge"}, "dpo_epochs": {"0", "huge"},
    "dpo_batch_size": {"huge"}, "dpo_lr": {"huge"}, "gradient_accumulation_steps": {"huge"},
}  # fmt: skip


def numeric_flags(module, accepts):
    kinds = {f.name: type(f.default) for f in dataclasses.fields(module.Args)}
    assert {n for n, k in kinds.items() if k in (int, float)} == accepts.keys()  # all of them
    return [(module, name, kinds[name], v) for name in accepts for v in VALUES]


@pytest.mark.parametrize(
    "module,name,kind,value",
    numeric_flags(rm, RM_ACCEPTS) + numeric_flags(rl, RL_ACCEPTS),
    ids=lambda x: getattr(x, "__name__", str(x)),
)
def test_every_numeric_flag_is_checked(module, name, kind, value, capsys):
    accepts = (RM_ACCEPTS if module is rm else RL_ACCEPTS)[name]
    flag = "--" + name.replace("_", "-")
    text = {"huge": "1000000000000" if kind is int else "1e12"}.get(value, value)
    argv = [*BASE[module], flag, text]
    if value == "huge" and "long" in accepts:  # accepted; a run would take that long
        args = module.parse_args(argv)
        if module is rl:
            rl.check_flags_together(args, 1)
        return
    code, out, message, _ = run_main(module, argv, capsys)
    if value in accepts or (value == "huge" and "big" in accepts and code == 0):
        assert code == 0, message
        json.loads(out.strip().splitlines()[-1])
    else:
        assert_error(code, message, *([] if value == "huge" and "big" in accepts else [flag]))


@pytest.mark.parametrize("module", [rm, rl], ids=lambda m: m.__name__)
def test_string_and_boolean_flags(module, capsys):
    strings = [f.name for f in dataclasses.fields(module.Args) if isinstance(f.default, str)]
    for name in strings:
        flag = "--" + name.replace("_", "-")
        argv = [*BASE[module], "--output-dir", f"out_{name}", flag, "abc"]
        code, out, message, _ = run_main(module, argv, capsys)
        if name in ("output_dir", "label_input", "label_output"):  # a name, or unused
            assert code == 0, (flag, message)
        else:
            assert_error(code, message)
    code, _, message, _ = run_main(module, [*BASE[module], "--cuda", "abc"], capsys)
    assert_error(code, message, "unrecognized arguments: abc")


def test_rlhf_flag_rules_that_need_two_flags(capsys):
    for argv, fragment in [
        (["--rollout-batch-size", "1", "--minibatch-size", "1"], "--rollout-batch-size >= 2"),
        (["--minibatch-size", "8"], "--minibatch-size"),
        (["--algo", "grpo", "--samples-per-prompt", "1"], "--samples-per-prompt"),
        (["--algo", "rloo", "--samples-per-prompt", "3"], "--samples-per-prompt"),
        (["--eval-samples", "1"], "--eval-samples"),
        (["--max-new-tokens", "61"], "--max-new-tokens"),
    ]:
        assert_error(*run_main(rl, [*RL_BASE, *argv], capsys)[:3:2], fragment)
    assert not Path("out").exists()  # nothing was written
    # The longest built-in prompt is 5 tokens: 59 new tokens fill the 64 positions exactly.
    policy, tokenizer = rl.load_gpt2(GPT2LMHeadModel, "tiny")
    args = rl.parse_args([*RL_BASE, "--max-new-tokens", "59"])
    rl.check_inputs(args, policy.config, tokenizer, list(rl.PROMPTS), None)


# ---------------------------------------------------------------- data files

PAIR = {"prompt": "The plot", "chosen": " was good.", "rejected": " was bad."}
LINE = json.dumps(PAIR) + "\n"


@pytest.mark.parametrize(
    "content,where",
    [
        (LINE.encode() + b'{"prompt": "a\xff"}\n', 2),
        (LINE.encode() + b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}\n', 2),
        (LINE.encode() + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2),
        (LINE.encode() + "\ufeff".encode() + LINE.encode(), 2),
        (LINE.encode() + json.dumps(PAIR | {"chosen": ""}).encode(), 2),
        (json.dumps(PAIR | {"rejected": PAIR["chosen"]}).encode(), 1),
        (LINE.encode() * 2 + b'{"prompt": ' + b"7" * 5000 + b"}\n", 3),
    ],
    ids=["non-utf8", "surrogate", "nesting", "bom-inside", "empty", "identical", "5000-digits"],
)
def test_preference_data_problems_name_flag_file_and_line(content, where, capsys):
    Path("prefs.jsonl").write_bytes(content)
    for module in (rm, rl):
        argv = [*BASE[module], "--preference-data", "prefs.jsonl"]
        message = run_main(module, argv, capsys)[2]
        assert_error(1, message, "--preference-data", f"prefs.jsonl:{where}")
        assert not Path("out").exists()


@pytest.mark.parametrize("flag", ["--preference-data", "--sft-data"])
def test_a_missing_or_unreadable_data_file_names_its_flag(flag, capsys):
    os.makedirs("a_dir")
    for path in ("nope.jsonl", "a_dir"):
        for module in (rm, rl) if flag == "--preference-data" else (rl,):
            code, _, message, _ = run_main(module, [*BASE[module], flag, path], capsys)
            assert_error(code, message, flag, path)
    assert not Path("out").exists()


def test_a_leading_bom_is_allowed():
    Path("prefs.jsonl").write_bytes("\ufeff".encode() + LINE.encode() * 2)
    for module in (rm, rl):
        rows = module.read_jsonl("--preference-data", "prefs.jsonl", tuple(PAIR))
        assert rows == [PAIR] * 2


def test_sft_prompts_empty_or_too_long(capsys):
    Path("sft.jsonl").write_text(json.dumps({"prompt": "", "response": " was good."}) + "\n")
    argv = [*RL_BASE, "--sft-data", "sft.jsonl"]
    assert_error(*run_main(rl, argv, capsys)[:3:2], "--sft-data sft.jsonl:1: empty prompt")
    Path("sft.jsonl").write_text(json.dumps({"prompt": "x" * 98, "response": " was good."}))
    assert_error(*run_main(rl, argv, capsys)[:3:2], "sft.jsonl", "--max-new-tokens")
    assert not Path("out").exists()


# ---------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def saved_rm(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("saved") / "reward_model"
    backbone, tokenizer = rm.load_gpt2(rm.GPT2Model, "tiny")
    rm.RewardModel(backbone).save(str(path), tokenizer)
    return path


def damage(path, name, how):
    target = path / name
    data = target.read_bytes()
    if how == "nan":
        from safetensors.torch import load_file, save_file

        weights = load_file(target)
        next(iter(weights.values())).fill_(float("nan"))
        save_file(weights, target, metadata={"format": "pt"})
    else:
        target.write_bytes(data[: len(data) // 2] if how == "truncated" else b"garbage")


@pytest.mark.parametrize(
    "name,how",
    [
        ("reward_head.pt", "truncated"),
        ("reward_head.pt", "garbage"),
        ("model.safetensors", "truncated"),
        ("model.safetensors", "garbage"),
        ("model.safetensors", "nan"),
        ("config.json", "garbage"),
    ],  # fmt: skip
)
def test_damaged_model_directories_are_one_line_errors(saved_rm, name, how, capsys):
    path = Path("damaged")
    shutil.copytree(saved_rm, path)
    damage(path, name, how)
    for module in (rm, rl):
        with pytest.raises((OSError, FloatingPointError), match=f"{path}.*(cannot|non-finite)"):
            module.RewardModel.load(str(path))
    argv = [*RL_BASE, "--reward-model-path", str(path)]
    assert_error(*run_main(rl, argv, capsys)[:3:2], str(path))
    if name != "reward_head.pt":  # the backbone is a GPT-2 directory too
        for module in (rm, rl):
            argv = [*BASE[module], "--model-name", str(path)]
            assert_error(*run_main(module, argv, capsys)[:3:2], str(path))
    assert not Path("out").exists()


# ---------------------------------------------------------------- labelling


def label(monkeypatch, capsys, answers, *extra):
    """A labelling session with `answers` piped in (None: stdin closed)."""
    monkeypatch.setattr(sys, "stdin", None if answers is None else io.StringIO(answers))
    argv = ["--label", "--label-output", "prefs.jsonl", "--label-pairs", "5", *extra]
    return run_main(rm, argv, capsys)[:3]


def rows(path="prefs.jsonl"):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_labelling_mends_a_missing_newline_and_sets_a_torn_line_aside(monkeypatch, capsys):
    Path("prefs.jsonl").write_text(json.dumps(PAIR))  # a whole answer, no final newline
    code, _, _ = label(monkeypatch, capsys, "1\nq\n")
    assert code == 0 and len(rows()) == 2 and rows()[0] == PAIR
    torn = '{"prompt": "The movie", "cho'
    with open("prefs.jsonl", "a") as f:
        f.write(torn)  # what an interrupted write leaves
    code, out, _ = label(monkeypatch, capsys, "2\nq\n")
    assert code == 0 and "torn" in out and "prefs.jsonl.torn" in out
    assert len(rows()) == 3 and Path("prefs.jsonl.torn").read_text() == torn + "\n"
    code, out, _ = label(monkeypatch, capsys, "q\n")  # the next session starts cleanly
    assert code == 0 and "moved it to" not in out and len(rows()) == 3


def test_labelling_asks_each_pair_once_and_escapes_control_characters(monkeypatch, capsys):
    pairs = [
        {"prompt": "\x1b[2JQ:", "a": " \x1b[31mred", "b": " plain\r"},
        {"prompt": "\x1b[2JQ:", "a": " plain\r", "b": " \x1b[31mred"},  # the same, swapped
        {"prompt": "Q2:", "a": " up", "b": " down"},
        {"prompt": "Q2:", "a": " up", "b": " down"},
    ]
    Path("pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    code, out, _ = label(monkeypatch, capsys, "1\n2\n1\n", "--label-input", "pairs.jsonl")
    assert code == 0 and "\x1b" not in out and "\r" not in out
    assert "\\x1b[2JQ:" in out and "\\x1b[31mred" in out and "plain\\r" in out
    assert rows() == [
        {"prompt": "\x1b[2JQ:", "chosen": " \x1b[31mred", "rejected": " plain\r"},
        {"prompt": "Q2:", "chosen": " down", "rejected": " up"},
    ]
    assert "0 of 2 pairs already answered" in out and "[2/2]" in out and "[3/" not in out


def test_labelling_with_stdin_closed(monkeypatch, capsys):
    code, _, message = label(monkeypatch, capsys, None)
    assert_error(code, message, "standard input, which is closed")


# ---------------------------------------------------------------- reruns, failed saves


def test_rerun_into_an_earlier_run_needs_overwrite(capsys):
    os.makedirs("out/policy")
    Path("out/policy/old").write_text("old")
    Path("out/ppo_metrics.csv").write_text("iteration,gold\n1,0.5\n")
    assert_error(*run_main(rl, RL_BASE, capsys)[:3:2], "out holds an earlier run", "--overwrite")
    assert Path("out/ppo_metrics.csv").read_text() == "iteration,gold\n1,0.5\n"
    assert Path("out/policy/old").exists()
    code, _, message, _ = run_main(rl, [*RL_BASE, "--overwrite"], capsys)
    assert code == 0, message
    assert not Path("out/policy/old").exists()  # no old policy beside the new sft
    assert Path("out/ppo_metrics.csv").read_text().startswith("iteration,gold,rm_score")
    os.makedirs("rm_out/reward_model")
    argv = [*RM_BASE, "--output-dir", "rm_out"]
    assert_error(*run_main(rm, argv, capsys)[:3:2], "rm_out", "--overwrite")


def fail_halfway(path, data=b"x" * 1000):
    with open(path, "wb") as f:
        f.write(data[:500])
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("writer", ["torch.save", "safetensors"])
@pytest.mark.parametrize("module", [rm, rl], ids=lambda m: m.__name__)
def test_a_full_disk_keeps_the_previous_model(module, writer, saved_rm, monkeypatch):
    import transformers.modeling_utils

    shutil.copytree(saved_rm, "rm")
    model, tokenizer = module.RewardModel.load("rm")
    before = module.score(model, tokenizer, ["The plot"], [" was good."])
    with monkeypatch.context() as patch, pytest.raises(OSError, match="cannot write rm: .*No sp"):
        if writer == "torch.save":
            patch.setattr(torch, "save", lambda obj, path: fail_halfway(path))
        else:
            fail = lambda state, path, metadata=None: fail_halfway(path)  # noqa: E731
            patch.setattr(transformers.modeling_utils, "safe_save_file", fail)
        model.save("rm", tokenizer)
    assert sorted(os.listdir()) == ["rm"]  # no rm.tmp, no rm.old
    loaded, tok = module.RewardModel.load("rm")
    assert torch.equal(module.score(loaded, tok, ["The plot"], [" was good."]), before)


def test_rlhf_full_disk_at_the_rm_save_keeps_sft(monkeypatch, capsys):
    import transformers.modeling_utils

    real = transformers.modeling_utils.safe_save_file

    def full_at_rm(state, path, metadata=None):
        return fail_halfway(path) if "reward_model" in path else real(state, path, metadata)

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", full_at_rm)
    code, _, message, _ = run_main(rl, RL_BASE, capsys)
    assert_error(code, message, "cannot write out/reward_model", "No space left")
    assert sorted(os.listdir("out"))[1:] == ["sft"] and not leftovers()
    GPT2LMHeadModel.from_pretrained("out/sft", local_files_only=True)


@pytest.mark.parametrize("module", [rm, rl], ids=lambda m: m.__name__)
def test_unusable_output_directories(module, capsys):
    Path("file").write_text("")
    unusable = ["/proc/self", "file/sub"]
    if os.geteuid() != 0:  # root writes into read-only directories regardless
        os.makedirs("ro")
        os.chmod("ro", 0o555)
        unusable.append("ro")
    for out in unusable:
        argv = [*BASE[module], "--output-dir", out]
        assert_error(*run_main(module, argv, capsys)[:3:2], out)


# ---------------------------------------------------------------- non-finite models


def poison_step(monkeypatch, at):
    """After optimizer step number `at` (counted over every Adam and AdamW), a weight is NaN."""
    calls, reals = [], {cls: cls.step for cls in (torch.optim.Adam, torch.optim.AdamW)}
    for cls, real in reals.items():

        def step(self, *args, real=real, **kwargs):
            out = real(self, *args, **kwargs)
            calls.append(1)
            if len(calls) == at:
                with torch.no_grad():
                    self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
            return out

        monkeypatch.setattr(cls, "step", step)


@pytest.mark.parametrize(
    "at,fragments,saved",
    [
        (1, ["[sft]", "non-finite weights", "--sft-lr"], []),
        (2, ["[rm]", "non-finite weights", "--rm-lr"], ["sft"]),
        (3, ["non-finite weights", "--learning-rate", "ppo iteration 1"], ["reward_model", "sft"]),
    ],
    ids=["sft", "rm", "ppo"],
)
def test_rlhf_non_finite_weights_name_the_stage_and_are_never_saved(
    at, fragments, saved, monkeypatch, capsys
):
    poison_step(monkeypatch, at)
    assert_error(*run_main(rl, RL_BASE, capsys)[:3:2], *fragments)
    assert sorted(p for p in os.listdir("out") if not p.startswith("events")) == (
        sorted(saved + ["ppo_metrics.csv"]) if at == 3 else saved
    )


def test_reward_model_non_finite_weights_are_never_saved(monkeypatch, capsys):
    poison_step(monkeypatch, 2)
    message = run_main(rm, RM_BASE, capsys)[2]
    assert_error(1, message, "non-finite weights", "--learning-rate")
    assert [p for p in os.listdir("out") if not p.startswith("events")] == []


# ---------------------------------------------------------------- interrupts


def kill_self_at(monkeypatch, module, name, signals, when=lambda *a: True):
    """module.name(...), but first send this process `signals` (an interrupt at that point)."""
    real = getattr(module, name)

    def wrapped(*args, **kwargs):
        if when(*args):
            for s in signals:
                to_main_thread(s)
                time.sleep(0.05)  # delivered; a held signal is only recorded
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_reward_model_sigterm_in_training_says_nothing_is_kept(monkeypatch, capsys):
    kill_self_at(monkeypatch, rm, "bradley_terry_loss", [signal.SIGTERM])
    code, _, message, err = run_main(rm, RM_BASE, capsys)
    assert code == 130 and message.startswith("error: interrupted") and "Traceback" not in err
    assert [p for p in os.listdir("out") if not p.startswith("events")] == [] and not leftovers()


def test_rlhf_interrupts_in_ppo_and_in_the_final_save(monkeypatch, capsys):
    """Ctrl-C in stage 3's first iteration: SFT and RM kept, no policy; in its third: the
    policy of the second iteration, the last good state, is saved too."""
    with monkeypatch.context() as patch:
        kill_self_at(patch, rl, "ppo_update", [signal.SIGINT])
        code, out, _, err = run_main(rl, [*RL_BASE, "--ppo-iterations", "3"], capsys)
        assert code == 130, (out + err)[-3000:]
    assert sorted(os.listdir("out"))[1:] == ["ppo_metrics.csv", "reward_model", "sft"]
    assert not leftovers()
    rl.RewardModel.load("out/reward_model")
    calls, real = [], rl.ppo_update

    def third_update_then_interrupt(*args):
        calls.append(1)
        if len(calls) == 3:
            to_main_thread(signal.SIGINT)
            time.sleep(0.05)
        out = real(*args)
        weights.append({k: v.clone() for k, v in args[1].state_dict().items()})
        return out

    weights = []
    with monkeypatch.context() as patch:
        patch.setattr(rl, "ppo_update", third_update_then_interrupt)
        code, _, _, _ = run_main(
            rl, [*RL_BASE, "--ppo-iterations", "5", "--output-dir", "o"], capsys
        )
    assert code == 130 and len(weights) == 2 and not leftovers()
    assert len(Path("o/ppo_metrics.csv").read_text().splitlines()) == 3  # header, iterations 1-2
    saved = GPT2LMHeadModel.from_pretrained("o/policy", local_files_only=True).state_dict()
    assert all(torch.equal(saved[k], v) for k, v in weights[-1].items() if k in saved)
    # Ctrl-C, then SIGTERM, between writing policy.tmp and renaming it: both wait.
    kill_self_at(monkeypatch, rl, "replace_dir", [signal.SIGINT, signal.SIGTERM],
                 when=lambda tmp, path: path.endswith("policy"))  # fmt: skip
    code, _, message, _ = run_main(rl, [*RL_BASE, "--output-dir", "out2"], capsys)
    assert code == 130 and "interrupted" in message and not leftovers()
    GPT2LMHeadModel.from_pretrained("out2/policy", local_files_only=True)


LAUNCH = """import sys, time
sys.path.insert(0, {root!r})
import {name} as m
real = m.replace_dir
def slow(tmp, path):
    print("saving", path, flush=True)
    time.sleep({pause})
    real(tmp, path)
m.replace_dir = slow
m.main({argv!r})
"""


def wait_for(path, marker, proc, timeout=120):
    start = time.time()
    while marker not in Path(path).read_text():
        assert proc.poll() is None and time.time() - start < timeout, Path(path).read_text()
        time.sleep(0.1)


def test_signals_from_outside_during_training_and_during_the_final_save(tmp_path):
    """Two real processes, started together: SIGTERM to rlhf_ppo_gpt2.py while it trains
    (stage 3), and Ctrl-C then SIGTERM to reward_model.py while it saves its model."""
    runs = {
        "rlhf_ppo_gpt2": [*RL_BASE, "--ppo-iterations", "100000"],
        "reward_model": RM_BASE,
    }
    procs = {}
    for name, argv in runs.items():
        os.makedirs(name)
        pause = 3 if name == "reward_model" else 0  # a save long enough to be hit
        code = LAUNCH.format(root=str(ROOT), name=name, argv=argv, pause=pause)
        with open(f"{name}/stdout", "w") as out, open(f"{name}/stderr", "w") as err:
            env = os.environ | {"OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, "-c", code]
            procs[name] = subprocess.Popen(cmd, cwd=name, stdout=out, stderr=err, env=env)
    wait_for("reward_model/stdout", "saving out/reward_model", procs["reward_model"])
    procs["reward_model"].send_signal(signal.SIGINT)
    time.sleep(0.3)
    procs["reward_model"].send_signal(signal.SIGTERM)
    metrics = Path("rlhf_ppo_gpt2/out/ppo_metrics.csv")
    start = time.time()  # stage 3 has finished an iteration (the header and one row)
    while not metrics.exists() or len(metrics.read_text().splitlines()) < 2:
        assert procs["rlhf_ppo_gpt2"].poll() is None and time.time() - start < 120
        time.sleep(0.1)
    procs["rlhf_ppo_gpt2"].send_signal(signal.SIGTERM)
    sent = time.time()
    for name, proc in procs.items():
        assert proc.wait(timeout=120) == 130, Path(f"{name}/stderr").read_text()
        # seconds, not TensorBoard's 120 s flush; 10.4 s was seen at load 15, so 20 s of room
        assert name != "rlhf_ppo_gpt2" or time.time() - sent < 20
        err = Path(f"{name}/stderr").read_text().strip().splitlines()
        assert err[-1] == "error: interrupted; files saved before the interrupt are kept", err
        assert not leftovers(name)
    rm.RewardModel.load("reward_model/out/reward_model")  # complete: the save went first
    out = Path("rlhf_ppo_gpt2/out")
    assert sorted(os.listdir(out))[1:] == ["policy", "ppo_metrics.csv", "reward_model", "sft"]
    assert len((out / "ppo_metrics.csv").read_text().splitlines()) >= 2  # header + iteration 1
    rl.RewardModel.load(str(out / "reward_model"))
    GPT2LMHeadModel.from_pretrained(str(out / "policy"), local_files_only=True)
