"""Single-file independence has a price: code that two scripts share is copied. This test
proves the copies agree. Any top-level function or class defined under the same name in two
scripts must have identical source, unless the name is listed below with the reason why
the scripts legitimately differ."""

import ast
import importlib
import itertools
import json
import subprocess
import sys
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
    "check_args": "each script validates its own flags",
    "evaluate_checkpoint": "each script rebuilds its own networks (ppo_continuous also its "
    "frozen observation statistics) from a checkpoint",
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
    """The CLI, checkpoint and error-handling helpers are in every script."""
    for path in SCRIPTS:
        names = top_level_sources(path).keys()
        for helper in ("flag", "parse_args", "save_atomic", "main"):
            assert helper in names, f"{path.name} lacks {helper}()"


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
    assert summary["eval_mean_return"] == pytest.approx(returns.mean())
    assert summary["eval_std_return"] == pytest.approx(returns.std())


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
        ([str(tmp_path / "misfit.pt")], "does not fit"),
        ([str(other)], "was made by"),
        ([str(truncated)], "cannot read --eval-checkpoint"),
        ([str(tmp_path / "missing.pt")], "cannot read --eval-checkpoint"),
        ([str(checkpoints[name]), "--env-id", "Acrobot-v1"], "is an agent for CartPole-v1"),
        ([str(checkpoints[name]), "--eval-episodes", "0"], "--eval-episodes must be"),
    ]
    for argv, message in cases:
        argv = ["--eval-checkpoint", *argv, "--output-dir", str(tmp_path)]
        code, _, err = run_cli(module, ["--eval-episodes", "2", *argv], capsys)
        assert code != 0 and err.startswith("error: ") and message in err, (argv, err)
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
    assert json.loads(last)["videos"] == str(tmp_path / "videos")


@pytest.mark.parametrize("name", RL_SCRIPTS)
def test_capture_video_without_moviepy_is_a_one_line_error(name, capsys, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "moviepy" else real(n, *a)
    )
    argv = [*TINY, "--eval-episodes", "2", "--capture-video", "--output-dir", str(tmp_path)]
    code, _, err = run_cli(module, argv, capsys)
    assert code != 0 and "pip install moviepy" in err and "\n" not in err


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
    with pytest.raises(ValueError, match=r"need Discrete \(for Box actions: ppo_continuous"):
        module.make_envs("Pendulum-v1", 2, (gym.spaces.Discrete,))
    assert closed == [1]
    with pytest.raises(ValueError, match=r"need Box \(for Discrete actions: ppo_cartpole.py"):
        module.make_envs("CartPole-v1", 2, (gym.spaces.Box,))
    with pytest.raises(ValueError, match="cannot make --env-id"):
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
def test_episode_log_solved_rule_matches_a_naive_window(threshold):
    """EpisodeLog is one class in six scripts (identical source, proven above); its solved
    rule, with the threshold a parameter, against a loop over explicit windows."""
    mod = importlib.import_module("ppo_continuous")
    rng = np.random.default_rng(0)
    rets = np.concatenate(
        [rng.uniform(-1500, -250, 30), rng.uniform(-260, 600, 60), rng.uniform(470, 520, 40)]
    )
    episodes = [(100 * (i + 1), float(r)) for i, r in enumerate(rets)]
    log = mod.EpisodeLog(NullWriter(), threshold)
    for step, ret in episodes:
        log.add(step, ret)
    expected = None if threshold is None else naive_solved_step(episodes, threshold)
    assert log.solved_at_step == expected
    if threshold is not None:
        assert expected is not None  # the stream was built to cross both marks
    default = mod.EpisodeLog(NullWriter())
    assert default.threshold == 475.0
