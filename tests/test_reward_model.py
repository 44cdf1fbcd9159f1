"""reward_model.py against independent computations: the Bradley-Terry loss and its gradient
by hand, rewards of unpadded single sequences, the annotator model's closed form, statistics
of the normalised rewards, a short learning run, and the labelling tool driven through stdin.
Every test uses the tiny model; none reaches the network."""

import copy
import importlib.util
import io
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from transformers import GPT2Model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import reward_model as rm  # noqa: E402

torch.set_num_threads(1)  # what train() uses on the CPU


@pytest.fixture(scope="module")
def tiny():
    """A random tiny reward model and its tokenizer."""
    torch.manual_seed(0)
    backbone, tokenizer = rm.load_gpt2(GPT2Model, "tiny")
    model = rm.RewardModel(backbone).eval()
    # A random head reads a near-constant direction; a larger one makes differences visible.
    with torch.no_grad():
        model.head.weight.mul_(10)
    return model, tokenizer


def reward_alone(model, tokenizer, prompt, response):
    """The reward of one sequence with no padding at all: the reference for padded batches."""
    ids = tokenizer(prompt + response)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        return model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)).item()


# ---------------------------------------------------------------- Bradley-Terry loss


def test_bradley_terry_loss_by_hand():
    r_c = torch.tensor([2.0, -1.0, 0.5, 30.0, -30.0], dtype=torch.float64, requires_grad=True)
    r_r = torch.tensor([1.0, 1.0, 0.5, -30.0, 30.0], dtype=torch.float64, requires_grad=True)
    loss = rm.bradley_terry_loss(r_c, r_r)
    # -log σ(d) = log(1 + e^{-d}), with d = r_c - r_r
    d = [a - b for a, b in zip(r_c.tolist(), r_r.tolist(), strict=True)]
    expected = sum(math.log1p(math.exp(-x)) if x > -30 else -x for x in d) / len(d)
    assert loss.item() == pytest.approx(expected, rel=1e-12)
    loss.backward()
    # dL/dr_c = -σ(-d)/n < 0 (gradient descent raises r_chosen), dL/dr_r = +σ(-d)/n
    sig = [1 / (1 + math.exp(x)) for x in d]
    assert r_c.grad.tolist() == pytest.approx([-s / len(d) for s in sig], rel=1e-9)
    assert r_r.grad.tolist() == pytest.approx([s / len(d) for s in sig], rel=1e-9)
    assert (r_c.grad < 0).all() and (r_r.grad > 0).all()


def test_bradley_terry_gradient_step_widens_the_margin(tiny):
    # Through shared weights both rewards may move the same way; the margin r_c - r_r must
    # grow: to first order it changes by lr·σ(-d)·|∇r_c - ∇r_r|² ≥ 0.
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    ids, mask, _ = rm.encode(tokenizer, ["The plot"] * 2, [" was awful.", " was great."], 64)
    before = model(ids, mask).detach()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    rm.bradley_terry_loss(*model(ids, mask).split(1)).backward()
    opt.step()
    after = model(ids, mask).detach()
    assert after[0] - after[1] > before[0] - before[1]


# ---------------------------------------------------------------- reward model


def test_reward_is_read_at_the_last_real_token_whatever_the_padding(tiny):
    model, tokenizer = tiny
    prompts = ["The movie", "Honestly, the movie", "The plot", "The director's new film"]
    responses = [" was good.", " seemed not very good but fun.", " is dull.", " felt slow."]
    alone = [reward_alone(model, tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    assert max(alone) - min(alone) > 1e-2  # otherwise the test could not see a mix-up
    for side in ("right", "left"):
        ids, mask, _ = rm.encode(tokenizer, prompts, responses, 64, padding_side=side)
        with torch.no_grad():
            batch = model(ids, mask)
        assert batch.tolist() == pytest.approx(alone, abs=1e-5)
    # Extra padding of any amount and content, on either side, changes nothing.
    ids, mask, _ = rm.encode(tokenizer, prompts[:1], responses[:1], 64)
    gen = torch.Generator().manual_seed(0)
    for left, right in [(0, 7), (5, 0), (3, 11), (20, 2)]:
        pad_l = torch.randint(len(tokenizer), (1, left), generator=gen)
        pad_r = torch.randint(len(tokenizer), (1, right), generator=gen)
        x = torch.cat([pad_l, ids, pad_r], 1)
        m = torch.cat([torch.zeros(1, left), mask, torch.zeros(1, right)], 1).long()
        with torch.no_grad():
            assert model(x, m).item() == pytest.approx(alone[0], abs=1e-5)


def test_encode_masks():
    tokenizer = rm.train_tiny_tokenizer()
    ids, mask, resp = rm.encode(
        tokenizer, ["The plot", "Honestly, the movie"], [" is dull."] * 2, 64
    )
    eos = tokenizer.eos_token_id
    for row in range(2):
        n = int(mask[row].sum())
        assert ids[row, n - 1] == eos  # EOS appended, the last real token
        assert mask[row, n:].sum() == 0
        response = tokenizer.decode(ids[row][resp[row].bool()])
        assert response == " is dull." + rm.EOS_TOKEN
    # Too long: the start of the prompt goes, the response stays.
    ids, mask, resp = rm.encode(tokenizer, ["The plot " * 20], [" is dull."], 8)
    assert ids.shape == (1, 8) and tokenizer.decode(ids[0]).endswith(" is dull." + rm.EOS_TOKEN)


def test_tiny_tokenizer_is_deterministic_and_word_level_on_the_grammar():
    a, b = rm.train_tiny_tokenizer(), rm.train_tiny_tokenizer()
    assert a.get_vocab() == b.get_vocab()
    ids = a(" was not very good.")["input_ids"]
    assert a.convert_ids_to_tokens(ids) == ["Ġwas", "Ġnot", "Ġvery", "Ġgood", "."]
    assert a.decode(a("Any text, ünïcode too!")["input_ids"]) == "Any text, ünïcode too!"


def test_normalisation_gives_mean_0_std_1_on_the_reference_set(tiny):
    model, tokenizer = copy.deepcopy(tiny[0]), tiny[1]
    demos = rm.builtin_demonstrations(np.random.default_rng(0), 300)
    prompts, responses = [d["prompt"] for d in demos], [d["response"] for d in demos]
    raw = rm.score(model, tokenizer, prompts, responses).double()
    mean, std = model.normalize_(raw.float())
    after = rm.score(model, tokenizer, prompts, responses).double()
    assert float(after.mean()) == pytest.approx(0, abs=1e-5)
    assert float(after.std()) == pytest.approx(1, abs=1e-5)
    # An affine map of the old rewards, nothing else: (r - μ)/σ.
    assert after.tolist() == pytest.approx(((raw - mean) / std).tolist(), abs=1e-5)


def test_save_and_load_round_trip(tiny, tmp_path):
    model, tokenizer = tiny
    path = str(tmp_path / "rm")
    model.save(path, tokenizer)
    model.save(path, tokenizer)  # over an existing one
    assert sorted(os.listdir(tmp_path)) == ["rm"]  # no .tmp or .old left behind
    loaded, tok2 = rm.RewardModel.load(path)
    prompts, responses = ["The cast", "The plot"], [" was great.", " felt kind of dull."]
    assert rm.score(loaded, tok2, prompts, responses).tolist() == pytest.approx(
        rm.score(model, tokenizer, prompts, responses).tolist(), abs=1e-6
    )
    with pytest.raises(OSError, match="no reward model"):
        rm.RewardModel.load(str(tmp_path))


def test_model_name_that_cannot_load_names_the_flag_and_the_tiny_option(tmp_path):
    # An existing directory is read locally, so this never touches the network.
    with pytest.raises(OSError, match="--model-name .*use tiny"):
        rm.load_gpt2(GPT2Model, str(tmp_path))


# ---------------------------------------------------------------- built-in task


def test_builtin_task_is_a_pure_function_of_the_seed():
    a = rm.builtin_preferences(np.random.default_rng(3), 200, 0.1)
    b = rm.builtin_preferences(np.random.default_rng(3), 200, 0.1)
    c = rm.builtin_preferences(np.random.default_rng(4), 200, 0.1)
    assert a == b and a != c


def well_formed(response):
    """The grammar of reward_model.py's comment, as a regular expression written here."""
    words = lambda ws: "(?:" + "|".join(map(re.escape, ws)) + ")"  # noqa: E731
    adjectives = rm.POSITIVE + rm.NEUTRAL + rm.NEGATIVE
    clause = rf" {words(rm.VERBS)}(?: not)?(?: {words(rm.ADVERBS)})? {words(adjectives)}"
    return re.fullmatch(rf"{clause}(?: {words(rm.CONJUNCTIONS)} it{clause})?\.", response)


def test_demonstrations_are_well_formed_varied_and_balanced():
    demos = rm.builtin_demonstrations(np.random.default_rng(0), 5000)
    responses = [d["response"] for d in demos]
    assert all(well_formed(r) for r in responses)
    assert len(set(responses)) > 3000
    assert {d["prompt"] for d in demos} == set(rm.PROMPTS)
    g = rm.gold_scores(responses)
    assert abs(g.mean()) < 0.05  # an SFT policy starts near neutral
    assert (g > 0.5).mean() > 0.15 and (g < -0.5).mean() > 0.15
    for bad in [
        " was good",  # no period
        "was good.",  # no leading space
        " was good good.",  # repetition: the classic degenerate policy
        " was good.<|endoftext|>",
        " was very very good.",
        " was good and fun.",  # the second clause needs " it" and a verb
        " was good but it was fun and it was nice.",
        " was not bad but awful.",
        " was good. was good.",
        " was not not good.",
        " Was good.",
    ]:
        assert not well_formed(bad), bad
    for good in [" was good.", " seemed not kind of dull but it was really fun.", " is so great."]:
        assert well_formed(good)


def test_gold_score_is_vader_compound():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    texts = [" was great.", " was not good.", " felt long.", " was good but it was boring."]
    vader = SentimentIntensityAnalyzer()
    assert rm.gold_scores(texts).tolist() == [vader.polarity_scores(t)["compound"] for t in texts]
    assert rm.gold_scores(texts)[2] == 0 and rm.gold_scores(texts)[1] < 0


def test_annotator_follows_bradley_terry_probability():
    rng = np.random.default_rng(0)
    n = 200_000
    for diff, tau in [(0.1, 0.1), (-0.3, 0.2), (0.0, 0.5), (0.5, 1.0)]:
        prefers = rm.annotator_prefers_first(rng, np.full(n, diff), np.zeros(n), tau)
        p = 1 / (1 + math.exp(-diff / tau))
        assert prefers.mean() == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n) + 1e-3)
    noiseless = rm.annotator_prefers_first(rng, np.array([0.2, -0.1]), np.array([0.1, 0.0]), 0)
    assert noiseless.tolist() == [True, False]


def test_builtin_preferences_agree_with_gold_as_the_temperature_says():
    pairs = rm.builtin_preferences(np.random.default_rng(1), 2000, 0.0)
    g_c = rm.gold_scores([p["chosen"] for p in pairs])
    g_r = rm.gold_scores([p["rejected"] for p in pairs])
    assert (g_c >= g_r).all()  # τ = 0: the gold order (ties either way)
    pairs = rm.builtin_preferences(np.random.default_rng(1), 2000, 0.1)
    g_c = rm.gold_scores([p["chosen"] for p in pairs])
    g_r = rm.gold_scores([p["rejected"] for p in pairs])
    expected = np.mean(1 / (1 + np.exp(-np.abs(g_c - g_r) / 0.1)))
    assert (g_c > g_r).mean() + 0.5 * (g_c == g_r).mean() == pytest.approx(expected, abs=0.03)


# ---------------------------------------------------------------- learning

PROGRESS = re.compile(r"\[ *(\d+)%\] step (\d+)  loss \S+  elapsed \d+s  ETA \d+s")


def test_tiny_model_learns_builtin_preferences(tmp_path, capsys):
    start = time.time()
    # The default run on half the pairs; the benchmark runs the full default.
    argv = ["--model-name", "tiny", "--num-pairs", "8000", "--no-cuda"]
    argv += ["--output-dir", str(tmp_path)]
    summary = rm.train(rm.parse_args(argv))
    # Measured over seeds 1..10 (2026-11-22): gold accuracy 0.850 .. 0.934 (worst seed 4),
    # annotator accuracy 0.824 .. 0.893 (worst seed 3). The old bound of 0.85 sat on the worst
    # seed; these keep a margin of 0.05 for other CPU types. Chance is 0.5.
    assert summary["eval_gold_accuracy"] >= 0.80, summary
    assert summary["eval_label_accuracy"] >= 0.78, summary
    # The output folder is named first; then the progress line about 10 times, ending at 100%.
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith(f"files in {tmp_path}")
    progress = [PROGRESS.fullmatch(line) for line in out if line.startswith("[")]
    assert all(progress) and 9 <= len(progress) <= 11, out
    assert progress[-1].groups() == ("100", str(3 * math.ceil(7200 / 32)))
    print(f"learning test: {time.time() - start:.1f}s, {summary}")
    # The saved model is normalised on fresh demonstrations: mean ≈ 0, std ≈ 1.
    model, tokenizer = rm.RewardModel.load(summary["reward_model_path"])
    demos = rm.builtin_demonstrations(np.random.default_rng(123), 1000)
    r = rm.score(model, tokenizer, [d["prompt"] for d in demos], [d["response"] for d in demos])
    assert abs(float(r.mean())) < 0.15 and float(r.std()) == pytest.approx(1, abs=0.15)
    # ... and it ranks by sentiment.
    great, awful = rm.score(model, tokenizer, ["The plot"] * 2, [" was great.", " was awful."])
    assert great > 1 > -1 > awful


def test_progress_prints_each_tenth_once_and_always_100(capsys):
    for total in (1, 3, 10, 37, 1000):
        for step in range(1, total + 1):
            rm.progress(step, total, time.time(), loss=torch.tensor(0.5))
        lines = capsys.readouterr().out.splitlines()
        assert all(PROGRESS.fullmatch(line) for line in lines), lines
        assert len(lines) == min(total, 10) and lines[-1].startswith("[100%]")


# ---------------------------------------------------------------- labelling mode


def run_label(monkeypatch, tmp_path, answers, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO(answers))
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping: the tests re-parse the screen
    out = tmp_path / "prefs.jsonl"
    argv = ["--label", "--label-output", str(out), "--label-pairs", "5", *extra]
    return rm.train(rm.parse_args(argv)), out


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_labelling_records_answers_and_resumes(monkeypatch, tmp_path, capsys):
    summary, out = run_label(monkeypatch, tmp_path, "1\n2\nx\ns\nq\n")
    rows = read_rows(out)
    assert summary["answered"] == 2 and summary["skipped"] == 1 and len(rows) == 2
    shown = capsys.readouterr().out
    # What the terminal showed, re-parsed independently of the script.
    pairs = []
    for block in shown.split("\n[")[1:]:
        lines = block.splitlines()
        prompt = lines[0].split("] ", 1)[1]
        a = lines[1].removeprefix(f"  1: {prompt}")
        b = lines[2].removeprefix(f"  2: {prompt}")
        pairs.append((prompt, a, b))
    assert rows[0] == {"prompt": pairs[0][0], "chosen": pairs[0][1], "rejected": pairs[0][2]}
    assert rows[1] == {"prompt": pairs[1][0], "chosen": pairs[1][2], "rejected": pairs[1][1]}
    # Resume: the two answered pairs are not shown again; the skipped one is.
    summary, _ = run_label(monkeypatch, tmp_path, "1\n1\n1\n")
    shown = capsys.readouterr().out
    assert "2 of 5 pairs already answered" in shown
    assert f"] {pairs[2][0]}\n  1: {pairs[2][0]}{pairs[2][1]}" in shown  # the skipped pair
    assert summary["answered"] == 3 and summary["answered_total"] == 5
    rows = read_rows(out)
    assert len(rows) == 5 and rows[:2] == read_rows(out)[:2]
    assert len({(r["prompt"], frozenset((r["chosen"], r["rejected"]))) for r in rows}) == 5
    # Everything answered: nothing more is asked, and end of input ends the session.
    summary, _ = run_label(monkeypatch, tmp_path, "")
    assert summary["answered"] == 0 and len(read_rows(out)) == 5


def test_labelling_from_a_jsonl_of_pairs(monkeypatch, tmp_path):
    src = tmp_path / "pairs.jsonl"
    src.write_text(
        json.dumps({"prompt": "Q:", "a": " yes", "b": " no"})
        + "\n\n"
        + json.dumps({"prompt": "Q2:", "a": " up", "b": " down"})
        + "\n"
    )
    summary, out = run_label(monkeypatch, tmp_path, "2\n", "--label-input", str(src))
    assert read_rows(out) == [{"prompt": "Q:", "chosen": " no", "rejected": " yes"}]
    assert summary["pairs_total"] == 2


def test_labelling_prints_a_line_before_the_slow_imports(tmp_path):
    """With torch made unimportable, the run stops at `import torch`: what it printed by then
    is what a user sees during the seconds that the imports take."""
    script = os.path.join(ROOT, "reward_model.py")
    code = (f"import runpy, sys; sys.modules['torch'] = None; sys.argv = {[script, '--label']!r}; "
            f"runpy.run_path({script!r}, run_name='__main__')")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode != 0 and "torch" in proc.stderr
    assert len(proc.stdout.splitlines()) == 1 and proc.stdout.strip()


def test_labelling_header_wraps_between_words_and_states_the_criterion(monkeypatch, tmp_path):
    def header(columns, *extra):
        monkeypatch.setattr(sys, "stdin", io.StringIO("q\n"))
        monkeypatch.setenv("COLUMNS", str(columns))
        argv = ["--label", "--output-dir", str(tmp_path / "o"), "--label-pairs", "3", *extra]
        buf = io.StringIO()
        monkeypatch.setattr(sys, "stdout", buf)
        rm.train(rm.parse_args(argv))
        monkeypatch.undo()
        return buf.getvalue().split("\n\n")[0].splitlines()

    wide, narrow = header(10_000), header(100)
    assert len(wide) == 1 and len(narrow) > 1 and max(map(len, narrow)) < 100
    assert " ".join(narrow) == wide[0]  # broken only where there was a space
    assert "positive" in wide[0]  # what the built-in task's gold score rewards
    src = tmp_path / "pairs.jsonl"
    src.write_text(json.dumps({"prompt": "Q:", "a": " yes", "b": " no"}) + "\n")
    assert "criterion" in header(10_000, "--label-input", str(src))[0]


def test_labelling_names_the_valid_keys_after_an_invalid_one(monkeypatch, tmp_path, capsys):
    summary, out = run_label(monkeypatch, tmp_path, "x\n3\n1\nq\n")
    assert summary["answered"] == 1 and len(read_rows(out)) == 1
    shown = capsys.readouterr().out.splitlines()
    for bad in ("'x' is not", "'3' is not"):
        line = next(line for line in shown if bad in line)
        assert all(key in line for key in ("1 or 2", "s to skip", "q to quit")), line


def test_labelling_writes_under_the_output_dir_or_runs_never_the_current_folder(
    monkeypatch, tmp_path
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\nq\n"))
    summary = rm.train(rm.parse_args(["--label", "--label-pairs", "3", "--output-dir", "o"]))
    assert summary["label_output"] == os.path.join("o", "preferences.jsonl")
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\nq\n"))
    summary = rm.train(rm.parse_args(["--label", "--label-pairs", "3"]))
    assert summary["label_output"] == os.path.join("runs", "preferences.jsonl")
    assert sorted(os.listdir(tmp_path)) == ["o", "runs"]
    assert len(read_rows(tmp_path / "o" / "preferences.jsonl")) == 1
    assert len(read_rows(tmp_path / "runs" / "preferences.jsonl")) == 1


def test_training_on_two_labels_warns_in_one_line(tmp_path, capsys):
    """2 labels: 1 pair to train on and 1 held out, whose accuracy is 0 or 1 by chance."""
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n'
                    '{"prompt": "d", "chosen": " e", "rejected": " f"}\n')  # fmt: skip
    rm.main(["--model-name", "tiny", "--no-cuda", "--preference-data", str(data),
             "--output-dir", str(tmp_path / "o")])  # fmt: skip
    out, err = capsys.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "1 held-out" in warnings[0]
    summary = json.loads(out.splitlines()[-1])  # still a run, with a short, rounded summary
    assert summary["train_pairs"] == 1 and summary["eval_pairs"] == 1
    assert len(out.splitlines()[-1]) < 400
    assert all(v == round(v, 3) for v in summary.values() if isinstance(v, float))


class InterruptedStdin(io.StringIO):
    """Piped answers, then Ctrl-C while the tool waits for the next one."""

    def readline(self, *args):
        line = super().readline(*args)
        if not line:
            raise KeyboardInterrupt
        return line


def test_labelling_keeps_answers_when_interrupted(monkeypatch, tmp_path, capsys):
    out = tmp_path / "prefs.jsonl"
    monkeypatch.setattr(sys, "stdin", InterruptedStdin("2\n1\n"))
    with pytest.raises(SystemExit) as e:
        rm.main(["--label", "--label-output", str(out), "--label-pairs", "5"])
    assert e.value.code == 130
    assert len(read_rows(out)) == 2
    assert "interrupted" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input


def error_line(argv):
    """main(argv) must exit with one `error:` line; returns it."""
    with pytest.raises(SystemExit) as e:
        rm.main(argv)
    text = str(e.value.code)
    assert text.startswith("error: ") and "\n" not in text, text
    return text


GOOD_ROW = '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'


@pytest.mark.parametrize(
    "content,message",
    [
        (GOOD_ROW + '{"prompt": "a", "chosen": "b"\n', ":2: not"),
        (GOOD_ROW + '\n{"prompt": "a", "chosen": "b"}\n', ":3: needs string fields rejected"),
        ('["a", "b", "c"]\n', ":1: needs string fields prompt, chosen, rejected"),
        ('{"prompt": "a", "chosen": 1, "rejected": "c"}\n', ":1: needs string fields chosen"),
        (GOOD_ROW + '{"prompt": "a", "chosen": ' + "9" * 5000 + "}\n", ":2: not"),
        (GOOD_ROW + GOOD_ROW + '{"prompt": "\xff"}\n', ":3: not"),
        ("", "no examples"),
        ("\n  \n", "no examples"),
    ],
)
def test_malformed_preference_data_names_flag_file_and_line(tmp_path, content, message):
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(content.encode("latin-1" if "\xff" in content else "utf-8"))
    argv = ["--model-name", "tiny", "--preference-data", str(path)]
    text = error_line([*argv, "--output-dir", str(tmp_path / "o")])
    assert text.startswith(f"error: --preference-data {path}") and message in text
    assert not (tmp_path / "o").exists()


def test_other_bad_input_gives_one_line_errors(tmp_path, monkeypatch):
    missing = error_line(["--preference-data", str(tmp_path / "missing.jsonl")])
    assert "--preference-data" in missing and "missing.jsonl" in missing
    assert "--preference-data" in error_line(["--preference-data", str(tmp_path)])  # a folder
    assert "--eval-fraction" in error_line(["--eval-fraction", "1.5"])
    assert "--batch-size" in error_line(["--batch-size", "0"])
    assert "--annotator-temperature" in error_line(["--annotator-temperature", "-1"])
    assert "--learning-rate" in error_line(["--learning-rate", "nan"])
    assert "--seed" in error_line(["--seed", str(2**32)])
    assert "unrecognized" in error_line(["--no-such-flag"])
    one = tmp_path / "one.jsonl"
    one.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    assert "too few" in error_line(["--model-name", "tiny", "--preference-data", str(one)])
    bad = tmp_path / "bad_pairs.jsonl"
    bad.write_text('{"prompt": "a", "a": "b"}\n')
    monkeypatch.setattr(sys, "stdin", io.StringIO("1\n"))
    assert f"--label-input {bad}:1: needs string fields b" in error_line(
        ["--label", "--label-input", str(bad), "--output-dir", str(tmp_path)]
    )


def test_a_used_output_dir_needs_overwrite(tmp_path):
    (tmp_path / "reward_model").mkdir()
    text = error_line(["--model-name", "tiny", "--num-pairs", "50", "--output-dir", str(tmp_path)])
    assert str(tmp_path) in text and "--overwrite" in text


def test_interrupt_in_training_is_one_line_and_saves_nothing(monkeypatch, tmp_path, capsys):
    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(rm, "bradley_terry_loss", interrupted)
    with pytest.raises(SystemExit) as e:
        rm.main(["--model-name", "tiny", "--no-cuda", "--num-pairs", "50", "--num-reference",
                 "10", "--output-dir", str(tmp_path)])  # fmt: skip
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: interrupted")
    assert not (tmp_path / "reward_model").exists()


def test_help_shows_the_usage_examples(capsys):
    with pytest.raises(SystemExit) as e:
        rm.parse_args(["--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert "python reward_model.py --label" in shown and "HF_HUB_OFFLINE=1" in shown
    assert "(default: )" not in shown


# ---------------------------------------------------------------- copies in rlhf_ppo_gpt2.py


def load_rlhf():
    path = os.path.join(ROOT, "rlhf_ppo_gpt2.py")
    if not os.path.exists(path):
        pytest.skip("rlhf_ppo_gpt2.py does not exist yet")
    spec = importlib.util.spec_from_file_location("rlhf_ppo_gpt2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rlhf_copy_generates_the_same_task():
    rl = load_rlhf()
    for seed in (0, 7):
        for fn, args in [("builtin_demonstrations", (300,)), ("sample_responses", (300,))]:
            ours = getattr(rm, fn)(np.random.default_rng(seed), *args)
            theirs = getattr(rl, fn)(np.random.default_rng(seed), *args)
            assert ours == theirs, fn
        gold = np.random.default_rng(seed).uniform(-1, 1, (2, 300))
        ours = rm.annotator_prefers_first(np.random.default_rng(seed), *gold, 0.1)
        assert (ours == rl.annotator_prefers_first(np.random.default_rng(seed), *gold, 0.1)).all()
    texts = [" was good.", " was good good.", " felt not so dull but it was fun.", "bad"]
    assert [bool(well_formed(t)) for t in texts] == [rl.is_well_formed(t) for t in texts]
    assert rm.gold_scores(texts).tolist() == rl.gold_scores(texts).tolist()
    assert rm.train_tiny_tokenizer().get_vocab() == rl.train_tiny_tokenizer().get_vocab()


def test_rlhf_copy_gives_the_same_rewards_for_the_same_weights(tiny, tmp_path):
    rl = load_rlhf()
    model, tokenizer = tiny
    torch.manual_seed(0)
    backbone, tok2 = rl.load_gpt2(GPT2Model, "tiny")
    theirs = rl.RewardModel(backbone).eval()
    theirs.load_state_dict(model.state_dict())
    prompts, responses = ["The cast", "Overall, the film"], [" was great.", " is not so fun."]
    for side in ("left", "right"):
        a = model(*rm.encode(tokenizer, prompts, responses, 64, side)[:2])
        b = theirs(*rl.encode(tok2, prompts, responses, 64, side)[:2])
        assert a.tolist() == b.tolist()
    # A reward model saved here loads there.
    model.save(str(tmp_path / "rm"), tokenizer)
    loaded, tok3 = rl.RewardModel.load(str(tmp_path / "rm"))
    assert rl.score(loaded, tok3, prompts, responses).tolist() == pytest.approx(
        rm.score(model, tokenizer, prompts, responses).tolist(), abs=1e-6
    )


def test_length_grouped_batches_cover_every_pair_once_and_pad_less():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 18, size=1000)
    batches = rm.length_grouped_batches(rng, lengths, 32)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert len(batches) == math.ceil(1000 / 32) and max(map(len, batches)) == 32
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(1000), len(batches))
    assert padded < 0.85 * sum(len(b) * lengths[b].max() for b in random_batches)


@pytest.mark.parametrize(
    "n,fraction,n_eval", [(10, 0.1, 1), (10, 0.25, 2), (200, 0.1, 20), (3, 0.0, 1)]
)
def test_split_held_out_is_a_partition_of_the_stated_size(n, fraction, n_eval):
    pairs = [{"prompt": str(i), "chosen": "a", "rejected": "b"} for i in range(n)]
    train, held = rm.split_held_out(pairs, np.random.default_rng(0), fraction)
    assert len(held) == n_eval  # max(1, round(f·n)), by hand
    ids = sorted(int(p["prompt"]) for p in train + held)
    assert ids == list(range(n))  # every pair once: disjoint and complete
    with pytest.raises(ValueError, match="too few"):
        rm.split_held_out(pairs[:1], np.random.default_rng(0), fraction)
