"""Single-file independence has a price: code that two scripts share is copied. This test
proves the copies agree. Any top-level function or class defined under the same name in two
scripts must have identical source, unless the name is listed below with the reason why
the scripts legitimately differ."""

import ast
import importlib
import inspect
import itertools
import json
import subprocess
import sys
import types
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in ROOT.glob("*.py"))
sys.path.insert(0, str(ROOT))

# Names that every script defines for itself.
DIFFER_BY_DESIGN = {
    "Args": "each script has its own flags",
    "train": "each script has its own training loop",
}


def top_level_sources(path):
    text = path.read_text()
    tree = ast.parse(text)
    return {
        node.name: ast.get_source_segment(text, node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef)
    }


def test_scripts_exist():
    assert {p.name for p in SCRIPTS} >= {"ppo_cartpole.py"}


@pytest.mark.parametrize(
    "a,b", list(itertools.combinations(SCRIPTS, 2)), ids=lambda p: getattr(p, "stem", p)
)
def test_same_name_same_source(a, b):
    sa, sb = top_level_sources(a), top_level_sources(b)
    for name in sorted((sa.keys() & sb.keys()) - DIFFER_BY_DESIGN.keys()):
        assert sa[name] == sb[name], f"{name} differs between {a.name} and {b.name}"


def test_no_script_imports_another():
    stems = {p.stem for p in SCRIPTS}
    for path in SCRIPTS:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not stems & set(names), f"{path.name} imports {stems & set(names)}"


def test_shared_helpers_present_everywhere():
    """The CLI and error-handling helpers are in every script."""
    for path in SCRIPTS:
        names = top_level_sources(path).keys()
        for helper in ("flag", "parse_args", "require", "brief", "main"):
            assert helper in names, f"{path.name} lacks {helper}()"


def called_names(path):
    """Every name a script uses (calls, references), other than where it is defined."""
    tree = ast.parse(path.read_text())
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)
    }


def test_nothing_is_copied_into_a_script_that_it_does_not_call():
    """Issue 30: a script holds only what it uses; a copy kept only for the shared-code test
    is dead weight for every reader."""
    for path in SCRIPTS:
        used = called_names(path)
        unused = [n for n in top_level_sources(path) if n not in used and n not in {"main", "Args"}]
        assert not unused, f"{path.name} defines but never uses {unused}"


# Issue 30's budgets (wc -l); rlhf_ppo_gpt2 has 80 more for issue 34's two algorithms.
LINE_BUDGETS = {"ppo_cartpole": 520, "a2c": 480, "reinforce": 480, "trpo": 570,
                "ppo_continuous": 720, "trpo_continuous": 740, "reward_model": 700,
                "rlhf_ppo_gpt2": 1350 + 80}  # fmt: skip


def test_every_script_within_its_line_budget():
    """Minimal is a promise: a script is read before it is run (issue 30)."""
    assert {p.stem for p in SCRIPTS} == LINE_BUDGETS.keys()
    for path in SCRIPTS:
        lines = len(path.read_text().splitlines())
        assert lines <= LINE_BUDGETS[path.stem], (path.name, lines, LINE_BUDGETS[path.stem])


FIRST_MATH_BEFORE = {"ppo_continuous.py": 110, "trpo_continuous.py": 110}  # others: 80


@pytest.mark.parametrize(
    "path",
    [p for p in SCRIPTS if p.stem not in ("reward_model", "rlhf_ppo_gpt2")],
    ids=lambda p: p.stem,
)
def test_the_paper_comes_first(path):
    """Issue 30's layout: the first function after Args (the first equation) starts before
    line 80 (110 in the continuous scripts, which have more flags), and the plumbing block,
    under its banner, comes after train()."""
    tree = ast.parse(path.read_text())
    defs = [n for n in tree.body if isinstance(n, ast.FunctionDef | ast.ClassDef)]
    after_args = defs[[d.name for d in defs].index("Args") + 1]
    assert after_args.lineno < FIRST_MATH_BEFORE.get(path.name, 80), (
        after_args.name,
        after_args.lineno,
    )
    lines = path.read_text().splitlines()
    banner = next(i for i, line in enumerate(lines, 1) if line.startswith("# ==== Plumbing"))
    assert banner > next(d.lineno for d in defs if d.name == "train")


# ------------------------------------------------- the shared helpers, run in every script
# The copies are identical (above), but each script calls them its own way: run each.

RL_SCRIPTS = ["ppo_cartpole", "trpo", "reinforce"]
TINY = ["--no-cuda", "--total-timesteps", "512", "--num-envs", "2", "--seed", "3"]


def run_cli(module, argv, capsys):
    """module.main(argv) in this process: (exit code, last stdout line, stderr)."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
        print(e.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, (out.strip().splitlines() or [""])[-1], err.strip()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A tiny training run of each script; {script: checkpoint path}."""
    paths = {}
    for name in RL_SCRIPTS:
        out = tmp_path_factory.mktemp(name)
        subprocess.run([sys.executable, str(ROOT / f"{name}.py"), *TINY, "--output-dir", str(out)],
                       check=True, capture_output=True, cwd=ROOT)  # fmt: skip
        paths[name] = next(p for p in out.glob("*.pt"))
    return paths


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_eval_checkpoint_replays_the_saved_greedy_policy(name, checkpoints, capsys, tmp_path):
    """--eval-checkpoint plays N greedy episodes of the saved agent; the returns are replayed
    here with a loop of our own on a vector env reset with the same seed."""
    module = importlib.import_module(name)
    argv = ["--eval-checkpoint", str(checkpoints[name]), "--eval-episodes", "3", "--seed", "7"]
    code, last, err = run_cli(module, [*argv, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    summary = json.loads(last)
    ckpt = torch.load(checkpoints[name])
    assert checkpoints[name].name == "model.pt"
    assert ckpt["script"] == f"{name}.py" and ckpt["env_id"] == "CartPole-v1"
    policy = torch.nn.Sequential(*(module.mlp(4, 2, ckpt["args"]["hidden_size"], 1.0)))
    policy.load_state_dict({k[6:]: v for k, v in ckpt["agent"].items() if k[:6] == "actor."})
    envs = gym.make_vec("CartPole-v1", 3)
    obs, _ = envs.reset(seed=7 + 10_000)
    returns, alive = np.zeros(3), np.ones(3, bool)
    while alive.any():
        with torch.no_grad():
            action = policy(torch.as_tensor(obs)).argmax(-1).numpy()
        obs, reward, term, trunc, _ = envs.step(action)
        returns, alive = returns + reward * alive, alive & ~(term | trunc)
    assert summary["eval_episodes"] == 3
    assert summary["eval_mean_return"] == pytest.approx(returns.mean(), abs=1e-3)  # rounded
    assert summary["eval_std_return"] == pytest.approx(returns.std(), abs=1e-3)


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_eval_checkpoint_rejects_foreign_corrupt_and_missing_files(
    name, checkpoints, capsys, tmp_path
):
    module = importlib.import_module(name)
    other = checkpoints[RL_SCRIPTS[(RL_SCRIPTS.index(name) + 1) % 3]]
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoints[name].read_bytes()[:1000])
    misfit = torch.load(checkpoints[name])
    misfit["args"]["hidden_size"] = 7  # the saved weights are 64 wide
    torch.save(misfit, tmp_path / "misfit.pt")
    cases = [
        [str(tmp_path / "misfit.pt")],
        [str(other)],
        [str(truncated)],
        [str(tmp_path / "missing.pt")],
        [str(checkpoints[name]), "--eval-episodes", "0"],
    ]
    for argv in cases:
        argv = ["--eval-checkpoint", *argv, "--output-dir", str(tmp_path)]
        code, _, err = run_cli(module, ["--eval-episodes", "2", *argv], capsys)
        assert code != 0 and err.startswith("error: ") and "--eval-" in err, (argv, err)
        assert "\n" not in err


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_capture_video_writes_one_mp4_per_episode(name, checkpoints, capsys, tmp_path):
    pytest.importorskip("moviepy", reason="moviepy is the optional extra for --capture-video")
    module = importlib.import_module(name)
    argv = ["--eval-checkpoint", str(checkpoints[name]), "--eval-episodes", "2",
            "--capture-video", "--output-dir", str(tmp_path)]  # fmt: skip
    code, last, err = run_cli(module, argv, capsys)
    assert code == 0, err
    videos = sorted(p.name for p in (tmp_path / "videos").glob("*.mp4"))
    assert videos == ["env0-episode-0.mp4", "env1-episode-0.mp4"]


@pytest.mark.parametrize("missing", ["moviepy", "pygame"])
@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_capture_video_names_the_missing_package_before_training(
    name, missing, capsys, tmp_path, monkeypatch
):
    """Issue 30: --capture-video checks every optional package it needs (moviepy, and the
    renderer: pygame for CartPole) before training, in one line that names it."""
    module = importlib.import_module(name)
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if not installed
    if missing == "pygame":
        monkeypatch.setitem(sys.modules, "moviepy", types.ModuleType("moviepy"))
    argv = [*TINY, "--eval-episodes", "2", "--capture-video", "--output-dir", str(tmp_path)]
    code, _, err = run_cli(module, argv, capsys)
    assert code != 0 and err.startswith("error: ") and missing in err.lower() and "\n" not in err
    assert not (tmp_path / "model.pt").exists()  # stopped before training


class Float64Env(gym.Env):
    """CartPole-like spaces with float64 observations, which the networks must not see."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float64)
    action_space = gym.spaces.Discrete(2)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 4), {}

    def step(self, action):
        self.t += 1
        return self.np_random.uniform(-1, 1, 4), 1.0, self.t >= 5 + int(action), False, {}


gym.register("test/Float64-v0", Float64Env, max_episode_steps=20)


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_float64_observations_just_work(name, capsys, tmp_path):
    module = importlib.import_module(name)
    envs = module.make_envs("test/Float64-v0", 2, (gym.spaces.Discrete,))
    assert envs.reset(seed=0)[0].dtype == np.float32
    envs.close()
    argv = [*TINY, "--env-id", "test/Float64-v0", "--eval-episodes", "2"]
    code, last, err = run_cli(module, [*argv, "--output-dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert json.loads(last)["eval_mean_return"] >= 5


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_make_envs_errors_are_one_line_and_close_the_envs(name, monkeypatch):
    module = importlib.import_module(name)
    closed = []
    real_make_vec = gym.make_vec

    def recording_make_vec(*a, **k):
        envs = real_make_vec(*a, **k)
        envs.close = lambda: closed.append(1)
        return envs

    monkeypatch.setattr(gym, "make_vec", recording_make_vec)
    with pytest.raises(ValueError, match="--env-id Pendulum-v1 .* need a flat Box and Discrete"):
        module.make_envs("Pendulum-v1", 2, (gym.spaces.Discrete,))
    assert closed == [1]
    with pytest.raises(ValueError, match="--env-id CartPole-v1 .* need a flat Box and Box"):
        module.make_envs("CartPole-v1", 2, (gym.spaces.Box,))
    with pytest.raises(ValueError, match="--env-id NoSuchEnv-v0"):
        module.make_envs("NoSuchEnv-v0", 2, (gym.spaces.Discrete,))


def naive_solved_step(episodes, threshold):
    """The first step whose last-20 window (a full one) has mean ≥ threshold, by a plain loop."""
    for i in range(19, len(episodes)):
        window = [ret for _, ret in episodes[i - 19 : i + 1]]
        if sum(window) / 20 >= threshold:
            return episodes[i][0]
    return None


class NullWriter:
    def add_scalar(self, *args):
        pass


@pytest.mark.parametrize("threshold", [475.0, -200.0, None])
def test_solved_rule_matches_a_naive_window(threshold):
    """Run is one class in every RL script (identical source, proven above); its solved rule,
    with the threshold a parameter, against a loop over explicit windows. One env whose
    every step ends an episode with the given return."""
    mod = importlib.import_module("ppo_cartpole")
    rng = np.random.default_rng(0)
    rets = np.concatenate(
        [rng.uniform(-1500, -250, 30), rng.uniform(-260, 600, 60), rng.uniform(470, 520, 40)]
    )
    run = object.__new__(mod.Run)  # only the episode log: no envs, no files
    run.writer, run.threshold, run.t0 = NullWriter(), threshold, 0.0
    run.episodes, run.solved_at_step, run.solved_at_s = [], None, None
    ones = torch.ones(len(rets), 1)
    step = run.add_rollout(np.zeros(1), torch.as_tensor(rets[:, None]), ones, 0)
    episodes = [(i + 1, float(r)) for i, r in enumerate(rets)]
    assert step == len(rets) and run.episodes == episodes
    expected = None if threshold is None else naive_solved_step(episodes, threshold)
    assert run.solved_at_step == expected
    if threshold is not None:
        assert expected is not None  # the stream was built to cross both marks
    assert inspect.signature(mod.Run).parameters["threshold"].default == 475.0
