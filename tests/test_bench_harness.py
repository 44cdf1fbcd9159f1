"""The benchmark harness applies one rule to every implementation; check that rule on episode
lists built by hand, whose answers can be read off without the harness."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import harness  # noqa: E402


def episodes(returns, step=100):
    return [(step * (i + 1), float(r)) for i, r in enumerate(returns)]


def test_seed_sets_are_disjoint_and_large_enough():
    assert not set(harness.TUNING_SEEDS) & set(harness.HELD_OUT_SEEDS)
    assert len(harness.HELD_OUT_SEEDS) >= 20
    assert harness.seed_set_name(harness.HELD_OUT_SEEDS) == "held-out"
    assert harness.seed_set_name([1, 2]) == "tuning"
    assert harness.seed_set_name([1, 1001]) == "other"


def test_solved_step_is_the_first_window_reaching_the_threshold():
    # 19 episodes of 500 then 500: the first full window of 20 is at episode 20 (step 2000).
    assert harness.solved_step(episodes([500] * 25), 475) == 2000
    # Window mean after episode k (k >= 20) of [0]*10 + [500]*30 is 500*(k-10)/20 for
    # k <= 30; it first reaches 475 at k - 10 = 19, i.e. episode 29.
    assert harness.solved_step(episodes([0] * 10 + [500] * 30), 475) == 2900
    assert harness.solved_step(episodes([474] * 50), 475) is None
    assert harness.solved_step(episodes([500] * 19), 475) is None  # never a full window


def test_stability_counts():
    solved_then_steady = episodes([500] * 40)
    assert harness.stability(solved_then_steady, 475, 400) == (True, True)
    # Ten episodes of 0 after solving pull the window mean down to 250 < 400; it recovers.
    dip = episodes([500] * 20 + [0] * 10 + [500] * 40)
    assert harness.stability(dip, 475, 400) == (False, True)
    ends_low = episodes([500] * 20 + [100] * 20)
    assert harness.stability(ends_low, 475, 400) == (False, False)
    never = episodes([100] * 30)
    assert harness.stability(never, 475, 400) == (False, False)


def test_summarize_counts_and_medians():
    runs = [
        {"solved_at_step": 2000, "solved_at_s": 1.0, "episodes": episodes([500] * 30)},
        {"solved_at_step": 4000, "solved_at_s": 3.0, "episodes": episodes([500] * 30)},
        {"solved_at_step": None, "solved_at_s": None, "episodes": episodes([10] * 30)},
    ]
    s = harness.summarize(runs, budget=3000, threshold=475, floor=400)
    assert s["solved"] == "1/3"  # 4000 is past the budget of 3000
    assert s["median_steps"] == 3000 and s["median_s"] == 2.0
    assert s["held_after_solve"] == "2/3" and s["ended_solved"] == "2/3"
    assert s["final_mean"] == [500.0, 500.0, 10.0]


def test_peer_runs_report_every_episode_by_the_same_rule():
    """A peer run through PEER_PREAMBLE's learn_and_report: the JSON line holds every training
    episode, and its solved step is the harness's own rule applied to those episodes.
    Needs the benchmark extras (benchmarks/requirements.txt); skipped without them."""
    import pytest

    pytest.importorskip("stable_baselines3")
    runner = """
from stable_baselines3 import PPO
t_start = time.time()
model = PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=2, seed=seed), n_steps=64,
            seed=seed, device="cpu", verbose=0)
learn_and_report(model, t_start)
"""
    out = harness.run_peer(runner, 3, 1024, 20.0)
    assert out["global_step"] == 1024
    eps = [tuple(e) for e in out["episodes"]]
    assert len(eps) >= 20 and all(0 < s <= 1024 for s, _ in eps)
    assert out["solved_at_step"] == harness.solved_step(eps, 20.0)


def test_bootstrap_intervals_and_paired_ratio():
    # Constant runs: every resample has the same median, so each interval is the point.
    runs = {"a": [{"k": 10.0}] * 5, "b": [{"k": 20.0}] * 5}
    out = harness.bootstrap(runs, "k", n=200)
    assert out["a"] == {"median": 10.0, "ci95": [10.0, 10.0]}
    assert out["ratio_over_b"] == {"ratio": 0.5, "ci95": [0.5, 0.5]}
    # Paired by seed: b is exactly twice a on every seed, so every resampled ratio is 0.5
    # although the medians themselves vary; an unsolved seed (None) counts as infinitely slow.
    a = [1.0, 2.0, 3.0, 4.0, None]
    runs = {"a": [{"k": x} for x in a], "b": [{"k": None if x is None else 2 * x} for x in a]}
    out = harness.bootstrap(runs, "k", n=500)
    assert out["a"]["median"] == 3.0 and out["a"]["ci95"][0] < 3.0
    assert out["a"]["ci95"][1] == float("inf")  # resamples with 3 of 5 unsolved: no upper end
    assert out["ratio_over_b"]["ci95"] == [0.5, 0.5]


def test_same_runs_finds_a_changed_byte_or_tensor(tmp_path):
    """benchmarks/same_runs.py (the bit-for-bit check of a refactor) on run folders made by
    hand: identical folders pass; one changed CSV byte or one changed weight fails."""
    import same_runs
    import torch

    def folder(name, csv, bias):
        d = tmp_path / name
        d.mkdir()
        (d / "episodes.csv").write_text(csv)
        state = {"agent": {"w": torch.ones(2), "b": torch.tensor([bias])}, "args": {"seed": 1},
                 "optimizer": {"state": {0: {"exp_avg": torch.zeros(2)}}}}  # fmt: skip
        torch.save(state, d / "model.pt")
        return d

    a = folder("a", "global_step,episodic_return\n10,9\n", 0.5)
    assert same_runs.same(a, folder("b", "global_step,episodic_return\n10,9\n", 0.5)) == (1, 1)
    assert same_runs.same(a, folder("c", "global_step,episodic_return\n10,8\n", 0.5)) == (0, 1)
    assert same_runs.same(a, folder("d", "global_step,episodic_return\n10,9\n", 0.5001)) == (1, 0)
