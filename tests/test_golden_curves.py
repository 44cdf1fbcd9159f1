"""golden/plot_curves.check, the band check of README and docs/golden.md, on synthetic episode
lists (no training): it must see a run that solves and then collapses (issue 31)."""

import numpy as np
import pytest

from golden.plot_curves import check, main, running_mean


def write(path, episodes):
    """episodes: [(global_step, return)] -> an episodes.csv as the scripts write it."""
    path.write_text("global_step,episodic_return\n" + "".join(f"{s},{r:g}\n" for s, r in episodes))
    return path


def curve(points, budget=100_000, seed=0):
    """Episodes whose returns follow the piecewise-linear `points` [(step, return)] with a
    little noise below 500 (a perfect CartPole episode returns exactly 500), each episode
    lasting as many steps as its return, 8 at a time (8 envs)."""
    rng = np.random.default_rng(seed)
    xs, ys = zip(*points, strict=True)
    out, step = [], 0
    while step < budget:
        target = np.interp(step, xs, ys)
        ret = float(np.clip(target + rng.normal(0, 5) * (target < 500), 9, 500))
        step += int(ret)
        out += [(min(step, budget), round(ret))] * 8
    return out


HEALTHY = [(0, 20), (30_000, 500), (100_000, 500)]
# The run of issue 31 (ppo_cartpole.py, seed 1, AMD): solved at 53k, the last-20 mean fell to
# about 150 by the 80% line, and the run ended at 371.5.
COLLAPSED = [(0, 20), (53_000, 500), (62_000, 500), (80_000, 150), (100_000, 371.5)]


@pytest.fixture
def refs(tmp_path):
    """Ten reference runs that solve between 25k and 50k and stay, and two that collapse, as
    three of the old held-out references did (1018: to 10 at 55k, ending at 316): the min–max
    band then spans ~10..500 after 55k, and the end band must not lean on those two."""
    paths = [write(tmp_path / f"ref_seed{i}.csv",
                   curve([(0, 20), (25_000 + 2_500 * i, 500), (100_000, 500)], seed=i))
             for i in range(10)]  # fmt: skip
    paths.append(
        write(tmp_path / "ref_seed10.csv", curve(COLLAPSED[:3] + [(90_000, 300), (100_000, 300)]))
    )
    paths.append(
        write(
            tmp_path / "ref_seed11.csv",
            curve([(0, 20), (45_000, 420), (55_000, 10), (80_000, 10), (100_000, 316)], seed=11),
        )
    )
    return paths


def test_collapsed_run_is_outside_at_the_end(refs, tmp_path):
    run = write(tmp_path / "collapsed.csv", curve(COLLAPSED, seed=99))
    c = check(refs, run)
    # The old whole-run band cannot see it: the references span ~10..500 after 50k steps.
    assert c["inside"] > 0.9
    assert 320 < c["end_band"][0] < 400 and c["end_band"][1] == 500
    assert c["end_inside"] < 0.25
    assert not c["ok"]


def test_healthy_run_is_inside(refs, tmp_path):
    run = write(tmp_path / "healthy.csv", curve(HEALTHY, seed=7))
    c = check(refs, run)
    assert c["inside"] > 0.9 and c["end_inside"] == 1.0 and c["ok"]


def test_end_band_is_the_quantile_of_the_final_returns(refs, tmp_path):
    finals = [running_mean(p, 20)[1][-1] for p in refs]
    run = write(tmp_path / "healthy.csv", curve(HEALTHY, seed=7))
    assert check(refs, run, q=0.0)["end_band"] == (min(finals), max(finals))
    assert check(refs, run, q=0.5)["end_band"][0] == pytest.approx(np.median(finals))


def test_command_line_exit_status(refs, tmp_path, capsys):
    for i, p in enumerate(refs):
        p.rename(tmp_path / f"ppo_cartpole_seed{i}.csv")
    collapsed = write(tmp_path / "c.csv", curve(COLLAPSED, seed=99))
    healthy = write(tmp_path / "h.csv", curve(HEALTHY, seed=7))
    with pytest.raises(SystemExit) as e:
        main(["--curves", str(tmp_path), "--check", str(collapsed)])
    assert e.value.code == 1 and "OUTSIDE" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["--curves", str(tmp_path), "--check", str(healthy)])
    assert e.value.code == 0 and "OUTSIDE" not in capsys.readouterr().out


def test_solved_return_bounds_the_end_band_from_below(tmp_path):
    """References that all end at exactly 500 give the end band [500, 500]; with solved=475
    a run that stays at ~490 is inside, and the collapsed run is still outside."""
    refs = [write(tmp_path / f"r{i}.csv", curve(HEALTHY, seed=i)) for i in range(5)]
    steady = write(tmp_path / "s.csv", curve([(0, 20), (30_000, 490), (100_000, 490)], seed=5))
    assert check(refs, steady)["end_band"] == (500.0, 500.0) and not check(refs, steady)["ok"]
    c = check(refs, steady, solved=475)
    assert c["ok"] and c["end_inside"] == 1.0
    assert c["inside"] < 0.5  # the min–max band is the line 500 after 30k: not a verdict
    collapsed = write(tmp_path / "c.csv", curve(COLLAPSED, seed=99))
    assert not check(refs, collapsed, solved=475)["ok"]
