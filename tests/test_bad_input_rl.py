"""Bad input for the six RL scripts (issues 15 and 30): every flag × {0, −1, nan, inf, "abc"}
ends in a short successful run or one `error:` line naming the flag, with a non-zero exit,
never a traceback; so do environments the scripts cannot use; and interrupts, reruns and
failed saves lose no file that existed before. Everything runs in this process (runs of one
or two iterations) except the interrupts, which go to real processes too."""

import contextlib
import dataclasses
import errno
import importlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensorboard.summary.writer import record_writer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# One or two iterations of each script; a flag under test comes after these, so it wins.
TINY = {
    "ppo_cartpole": ["--num-envs", "2", "--num-steps", "32", "--update-epochs", "1"],
    "a2c": ["--num-envs", "2", "--num-steps", "8"],
    "reinforce": ["--num-envs", "2"],
    "trpo": ["--num-envs", "2", "--num-steps", "32", "--critic-epochs", "1"],
    "ppo_continuous": ["--env-id", "Pendulum-v1", "--num-envs", "2", "--num-steps", "32",
                       "--num-minibatches", "1", "--update-epochs", "1"],
    "trpo_continuous": ["--num-envs", "2", "--num-steps", "32", "--critic-epochs", "1"],
}  # fmt: skip
SCRIPTS = list(TINY)
STEPS = {"ppo_cartpole": 64, "a2c": 32, "reinforce": 1, "trpo": 64}  # others: 64
CONTINUOUS = {"ppo_continuous", "trpo_continuous"}


def to_main_thread(sig):
    """Send `sig` to this process's main thread. os.kill(getpid()) lets the kernel pick any
    thread (TensorBoard's writer, torch's pool); Python then runs the handler at some later
    bytecode of the main thread, wherever it happens to be (inside a finalizer the
    KeyboardInterrupt is only printed). pthread_kill to the main thread raises at once, right
    here, where the test means the interrupt to land."""
    signal.pthread_kill(threading.main_thread().ident, sig)


def argv_for(name, *flags, steps=None):
    steps = STEPS.get(name, 64) if steps is None else steps
    return ["--no-cuda", *TINY[name], "--total-timesteps", str(steps), *flags]


def run_main(module, argv, capsys):
    """module.main(argv) here: (exit code, stdout, stderr). Any other exception (a
    traceback) propagates and fails the test."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        if not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code != 0 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and all(n in err for n in needles), err


def assert_files_load(out):
    """Nothing half-written in `out`: no temporary file, every checkpoint loads with finite
    weights, every episodes.csv parses."""
    assert not list(Path(out).rglob("*.tmp")), list(Path(out).rglob("*.tmp"))
    for path in Path(out).rglob("*.pt"):
        state = torch.load(path, weights_only=True)["agent"]
        assert all(torch.isfinite(v).all() for v in state.values()), path
    for path in Path(out).rglob("episodes.csv"):
        header, *rows = path.read_text().splitlines()
        assert header == "global_step,episodic_return", path
        assert all(len([float(x) for x in row.split(",")]) == 2 for row in rows), path


def snapshot(out):
    return {p.name: p.read_bytes() for p in Path(out).iterdir() if not p.name.startswith("events")}


@pytest.fixture
def earlier_run(tmp_path, capsys):
    """An --output-dir holding a finished tiny run of a script (seed 3): (dir, its files)."""

    def make(name):
        out = tmp_path / "earlier"
        code, _, err = run_main(load(name), argv_for(name, "--seed", "3", "--output-dir",
                                                     str(out)), capsys)  # fmt: skip
        assert code == 0, err
        return out, snapshot(out)

    return make


def load(name):
    return importlib.import_module(name)


# --------------------------------------------------------------------- every flag, every value


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_flag_with_every_bad_value_is_a_run_or_a_one_line_error(
    name, tmp_path, capsys, monkeypatch
):
    """Each flag alone set to 0, −1, nan, inf and "abc". Every accepted value is run for an
    iteration or two, and whatever it saved must load; every refused one is one `error:`
    line that names the flag. (Huge sizes may fail inside the library: issue 30.)"""
    module = load(name)
    monkeypatch.chdir(tmp_path)  # --output-dir 0, -1, ... are directories here
    outcomes, failures = {"run": 0, "error": 0}, []
    for case, field in enumerate(dataclasses.fields(module.Args)):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):  # takes no value
            continue
        for value in ("0", "-1", "nan", "inf", "abc"):
            out = tmp_path / f"out{case}{value}"
            where = [] if field.name == "output_dir" else ["--output-dir", str(out)]
            code, stdout, err = run_main(module, argv_for(name, *where, flag, value), capsys)
            if code == 0:
                json.loads(stdout.strip().splitlines()[-1])
                outcomes["run"] += 1
            elif not (err.startswith("error: ") and err.count("\n") == 1 and flag in err):
                failures.append((flag, value, code, err[-300:]))
            else:
                outcomes["error"] += 1
            saved = Path(value) if field.name == "output_dir" else out
            if saved.is_dir():
                assert_files_load(saved)
    assert not failures, failures
    assert outcomes["run"] > 5 and outcomes["error"] > 40, outcomes


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_declares_its_rule(name):
    """Issue 30: each flag's rule sits beside it in Args; parse_args checks them all."""
    module = load(name)
    for field in dataclasses.fields(module.Args):
        if type(field.default) in (int, float):
            assert field.metadata["rule"] is not None, field.name
    for flags in (["--seed", str(2**32)], ["--gamma", "1.01"], ["--learning-rate", "-0.001"]):
        with pytest.raises(ValueError, match=flags[0]):
            module.parse_args(argv_for(name, *flags))
    module.parse_args(argv_for(name, "--seed", str(2**32 - 1)))


# --------------------------------------------------------------------- environments


class ToyEnv(gym.Env):
    """Three-dimensional observations from `observe(t)`, Discrete or Box actions, 50 steps."""

    def __init__(self, observe, dtype, box=False):
        self.observe, self.t = observe, 0
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (3,), dtype)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (1,)) if box else gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.observe(self, 0), {}

    def step(self, action):
        self.t += 1
        return self.observe(self, self.t), 1.0, False, self.t >= 50, {}


def nan_after_three(env, t):  # observations turn NaN at the fourth step
    return np.full(3, np.nan if t > 3 else 0.5, np.float32)


def float64(env, t):  # float64 observations, which the networks must not see as float64
    return env.np_random.uniform(-1, 1, 3)


NaNAfterThree = lambda box=False: ToyEnv(nan_after_three, np.float32, box)  # noqa: E731
Float64 = lambda box=False: ToyEnv(float64, np.float64, box)  # noqa: E731


gym.register("test/NaNDiscrete-v0", NaNAfterThree)
gym.register("test/NaNBox-v0", NaNAfterThree, kwargs=dict(box=True))
gym.register("test/Float64Discrete-v0", Float64)
gym.register("test/Float64Box-v0", Float64, kwargs=dict(box=True))


@pytest.mark.parametrize("name", SCRIPTS)
def test_environments_the_scripts_cannot_use_are_one_line_errors(name, tmp_path, capsys):
    module = load(name)
    other_kind = "Acrobot-v1" if name in CONTINUOUS else "Pendulum-v1"
    cases = ["FrozenLake-v1", "Taxi-v4", "CliffWalking-v1", "Blackjack-v1", "phys2d/CartPole-v1",
             "Hopper-v2", "module:Env-v0", other_kind]  # fmt: skip
    for env_id in cases:
        argv = argv_for(name, "--env-id", env_id, "--output-dir", str(tmp_path / "o"))
        code, _, err = run_main(module, argv, capsys)
        assert_one_line_error(code, err, "--env-id", env_id)
    assert not (tmp_path / "o").exists()  # bad input leaves nothing


@pytest.mark.parametrize("name", SCRIPTS)
def test_nan_observations_are_a_one_line_error_naming_the_env(name, tmp_path, capsys):
    env_id = "test/NaNBox-v0" if name in CONTINUOUS else "test/NaNDiscrete-v0"
    argv = argv_for(name, "--env-id", env_id, "--output-dir", str(tmp_path))
    code, _, err = run_main(load(name), argv, capsys)
    assert_one_line_error(code, err, f"--env-id {env_id}", "NaN")
    assert_files_load(tmp_path)


@pytest.mark.parametrize("name", ["a2c", "ppo_continuous", "trpo_continuous"])
def test_float64_observations_just_work(name, tmp_path, capsys):
    """(ppo_cartpole, trpo and reinforce: tests/test_shared_code.py.)"""
    env_id = "test/Float64Box-v0" if name in CONTINUOUS else "test/Float64Discrete-v0"
    argv = argv_for(name, "--env-id", env_id, "--eval-episodes", "2")
    code, out, err = run_main(load(name), [*argv, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["eval_mean_return"] is not None


# --------------------------------------------------------------------- reruns and failed saves


@pytest.mark.parametrize("name", SCRIPTS)
def test_rerun_into_an_earlier_run_needs_overwrite(name, earlier_run, capsys):
    out, before = earlier_run(name)
    code, _, err = run_main(load(name), argv_for(name, "--output-dir", str(out)), capsys)
    assert_one_line_error(code, err, "--output-dir", "--overwrite")
    assert snapshot(out) == before


# The first function of each training loop, to interrupt before an iteration has ended.
FIRST_IN_LOOP = {"reinforce": "collect_episodes", "ppo_continuous": "rollout_normalized",
                 "trpo_continuous": "rollout_normalized"}  # fmt: skip


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("failure", ["non-finite", "interrupt"])
def test_overwrite_run_that_fails_at_once_keeps_the_earlier_run(
    name, failure, earlier_run, capsys, monkeypatch
):
    """With --overwrite, a rerun that ends before its first iteration does (a NaN from a
    learning rate that large, Ctrl-C) leaves the earlier run's model.pt and episodes.csv
    byte for byte: an untrained agent or a header-only log would lose what was there."""
    module = load(name)
    out, before = earlier_run(name)
    flags = ["--output-dir", str(out), "--overwrite", "--seed", "4"]
    if failure == "interrupt":

        def interrupted(*a, **k):
            raise KeyboardInterrupt

        monkeypatch.setattr(module, FIRST_IN_LOOP.get(name, "rollout"), interrupted)
    else:
        flags += ["--learning-rate", "1e36"]
    code, _, err = run_main(module, argv_for(name, *flags), capsys)
    if failure == "interrupt":
        assert code == 130 and err == "error: interrupted; files saved before the interrupt " \
                                      "are kept\n", err  # fmt: skip
    else:
        assert_one_line_error(code, err, "non-finite loss at iteration 1", "--")
    assert snapshot(out) == before


def write_half(errno_):
    """A writer for save_atomic that fills half a file, then fails like a full disk (ENOSPC)
    or a read-only filesystem (EROFS)."""

    def write(obj, path):
        with open(path, "wb") as f:
            f.write(b"PK\x03\x04 half a file")
        raise OSError(errno_, os.strerror(errno_))

    return write


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("which", ["checkpoint", "episodes.csv"])
def test_failed_save_keeps_the_last_good_file(name, which, earlier_run, capsys, monkeypatch):
    """The disk fills (or turns read-only) halfway through a save: the earlier file stays,
    no temporary file is left, and the error is one line naming the path."""
    module = load(name)
    out, before = earlier_run(name)
    errno_ = errno.ENOSPC if which == "checkpoint" else errno.EROFS
    if which == "checkpoint":
        monkeypatch.setattr(module.save_atomic, "__defaults__", (write_half(errno_),))
        path = out / "model.pt"
    else:
        half = write_half(errno_)
        monkeypatch.setattr(np, "savetxt", lambda f, rows, *a, **k: half(rows, f))
        path = out / "episodes.csv"
    argv = argv_for(name, "--output-dir", str(out), "--overwrite", "--seed", "4")
    code, _, err = run_main(module, argv, capsys)
    assert_one_line_error(code, err, f"error: cannot write {path}: ", os.strerror(errno_))
    assert (out / path.name).read_bytes() == before[path.name]
    assert_files_load(out)


@pytest.mark.parametrize("name", SCRIPTS)
def test_unusable_output_dir_is_a_one_line_error(name, capsys):
    for out in ("/proc/self", "/proc/self/new"):
        argv = argv_for(name, "--output-dir", out, "--overwrite")
        code, _, err = run_main(load(name), argv, capsys)
        assert_one_line_error(code, err, out)


@pytest.mark.parametrize("name", SCRIPTS)
def test_tensorboard_thread_failure_is_one_line(name, tmp_path, capsys, monkeypatch):
    """The disk fills under TensorBoard's writer: its thread's traceback must not reach
    stderr (pytest's own thread hook is taken away, so the default one would print it)."""
    calls, real = [], record_writer.RecordWriter.write

    def full_disk(self, data):
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(record_writer.RecordWriter, "write", full_disk)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    argv = argv_for(name, "--output-dir", str(tmp_path), steps=2000 if name != "reinforce" else 400)
    code, _, err = run_main(load(name), argv, capsys)
    assert_one_line_error(code, err, os.strerror(errno.ENOSPC))
    assert_files_load(tmp_path)


# --------------------------------------------------------------------- interrupts

LONG = 3000  # steps: dozens of iterations, each logged (the interrupt comes at the first)
INTERRUPTED = "error: interrupted; files saved before the interrupt are kept\n"
# Half the scripts get Ctrl-C in training, half SIGTERM; all get both during the save.
IN_TRAINING = dict(zip(SCRIPTS, [signal.SIGINT, signal.SIGTERM] * 3, strict=True))


@pytest.mark.parametrize("name", SCRIPTS)
def test_signals_in_training_and_during_the_final_save(name, earlier_run, capsys, monkeypatch):
    """Real signals to this process, from hooks in TensorBoard (once per iteration, after
    the update) and in os.replace (the final save's last file): the signal in training
    starts the final save; SIGTERM and a second Ctrl-C during it wait until it is complete.
    One line, exit 130, and the files are this run's (seed 5, trained), complete."""
    module = load(name)
    out, _ = earlier_run(name)
    inode = (out / "episodes.csv").stat().st_ino
    add_scalar, replace, sent = module.SummaryWriter.add_scalar, os.replace, []

    def add_scalar_then_signal(self, tag, *a, **k):
        if tag == "charts/SPS" and not sent:
            sent.append(IN_TRAINING[name])
            to_main_thread(IN_TRAINING[name])  # KeyboardInterrupt here, in training
        return add_scalar(self, tag, *a, **k)

    def replace_under_signals(src, dst):
        if str(src).endswith("episodes.csv.tmp"):
            to_main_thread(signal.SIGTERM)
            to_main_thread(signal.SIGINT)
            time.sleep(0.01)  # both handled by now, and held
        return replace(src, dst)

    monkeypatch.setattr(module.SummaryWriter, "add_scalar", add_scalar_then_signal)
    monkeypatch.setattr(os, "replace", replace_under_signals)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    # A fresh process's handlers, whatever an earlier test (or pytest) left installed.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    argv = argv_for(name, "--seed", "5", "--overwrite", "--output-dir", str(out), steps=LONG)
    try:
        code, _, err = run_main(module, argv, capsys)
    finally:
        for s, handler in handlers.items():  # main() makes SIGTERM a KeyboardInterrupt
            signal.signal(s, handler)
    assert sent and code == 130 and err == INTERRUPTED, err
    assert torch.load(out / "model.pt", weights_only=True)["args"]["seed"] == 5
    assert (out / "episodes.csv").stat().st_ino != inode  # replaced, not left as it was
    assert_files_load(out)


# Loaded by the interrupted processes only (PYTHONPATH): pauses the run where the test
# interrupts it, and tells the test so with a marker file. No hook is in the scripts.
HOOK = """
import os, signal, time
from torch.utils.tensorboard import SummaryWriter

signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores it
DIR = os.environ["RL_TEST_HOOK"]


def pause(name):  # until the test says go (or an interrupt ends the wait)
    open(os.path.join(DIR, name), "w").close()
    deadline = time.time() + 60
    while not os.path.exists(os.path.join(DIR, "go-" + name)) and time.time() < deadline:
        time.sleep(0.01)


add_scalar, replace = SummaryWriter.add_scalar, os.replace


def add_scalar_paused(self, tag, *a, **k):  # logged once per iteration, after its update
    if tag == "charts/SPS" and not os.path.exists(os.path.join(DIR, "training")):
        pause("training")
    return add_scalar(self, tag, *a, **k)


def replace_paused(src, dst, *a, **k):  # the final save's last file
    if str(src).endswith("episodes.csv.tmp"):
        pause("saving")
    return replace(src, dst, *a, **k)


SummaryWriter.add_scalar, os.replace = add_scalar_paused, replace_paused
"""
# Two scripts in real processes (each loads torch: seconds); the others, in this process.
IN_PROCESSES = ["ppo_cartpole", "trpo_continuous"]


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    """The scripts, started at once (they load torch in parallel) over an earlier run, with
    --overwrite and a budget far larger than the test waits for."""
    runs = {}
    for name in IN_PROCESSES:
        base = tmp_path_factory.mktemp(name)
        hook, out = base / "hook", base / "out"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        with contextlib.redirect_stdout(io.StringIO()):
            load(name).main(argv_for(name, "--seed", "3", "--output-dir", str(out)))
        env = dict(os.environ, PYTHONPATH=str(hook), RL_TEST_HOOK=str(hook))
        argv = argv_for(name, "--seed", "5", "--overwrite", "--output-dir", str(out),
                        steps=LONG)  # fmt: skip
        cmd = [sys.executable, str(ROOT / f"{name}.py"), *argv]
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        runs[name] = proc, hook, out
    yield runs
    for proc, _, _ in runs.values():
        if proc.poll() is None:
            proc.kill()


def wait_for(path, proc):
    deadline = time.time() + 120
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)


@pytest.mark.parametrize("name", IN_PROCESSES)
def test_interrupt_a_real_process_in_training_then_during_the_final_save(name, interrupted_runs):
    """The same from outside: the test sends the signals while the process is paused in
    training, then inside the final save (its temporary file written, not yet renamed)."""
    proc, hook, out = interrupted_runs[name]
    wait_for(hook / "training", proc)
    proc.send_signal(IN_TRAINING[name])
    wait_for(hook / "saving", proc)
    assert (out / "episodes.csv.tmp").exists()  # paused inside the save
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)  # let both arrive while the save is still paused
    (hook / "go-saving").touch()
    start = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == INTERRUPTED, err
    # Issue 30: closing TensorBoard's writer used to wait up to its 120 s flush interval.
    assert time.time() - start < 15
    assert torch.load(out / "model.pt", weights_only=True)["args"]["seed"] == 5
    assert_files_load(out)


@pytest.mark.parametrize("name", [*SCRIPTS, "reward_model", "rlhf_ppo_gpt2"])
def test_signals_during_start_up_end_quietly(name, tmp_path):
    """Issue 30: Ctrl-C or SIGTERM while torch and gymnasium load (before anything is saved)
    may end the process without a message, but never with a traceback or an abort; later,
    before training starts, it is the one line of main()."""
    for delay, sig in ((0.3, signal.SIGINT), (0.6, signal.SIGTERM), (1.0, signal.SIGINT)):
        proc = subprocess.Popen([sys.executable, str(ROOT / f"{name}.py"), "--no-cuda"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (-sig, 130, 1), (delay, proc.returncode, err)
        assert "Traceback" not in err and "abort" not in err.lower(), (delay, err)
        assert err.count("\n") <= 1, (delay, err)
