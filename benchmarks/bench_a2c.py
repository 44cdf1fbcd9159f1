"""Benchmark a2c.py against Stable-Baselines3 A2C on CartPole-v1: steps and seconds to solve
(mean return of the last 20 finished training episodes >= 475), the fraction of seeds solved
within 500k steps, and whether they stay solved.

SB3 runs the RL Zoo's tuned CartPole-v1 hyperparameters (rl-baselines3-zoo hyperparams/a2c.yml:
n_envs 8, ent_coef 0, everything else SB3's A2C defaults: n_steps 5, lr 7e-4 constant, γ 0.99,
λ 1, vf_coef 0.5, max_grad_norm 0.5, RMSprop α 0.99 ε 1e-5, separate 64-64 tanh networks).
The two alternate seed by seed, one process and one torch thread each.

Budget. Both run to STABILITY_STEPS (150k) and the stability counts are over that horizon;
a2c.py's default run is 100k steps, and with its constant learning rate the first 100k steps
of a 150k run are the default run, bit for bit. SB3 A2C is too slow here to run 20 seeds to
500k in the time this was measured in, so a seed of SB3 unsolved at 150k goes on up to 500k
and stops once solved: its solved-within-500k count is exact. A seed of ours unsolved by
150k counts as unsolved within 500k (against us).

    python benchmarks/bench_a2c.py                    # the 20 held-out seeds 1001..1020
    python benchmarks/bench_a2c.py --seeds 1001 1002 --only a2c.py --no-save
"""

import harness

BUDGET = 500_000
STABILITY_STEPS = 150_000

# HORIZON: the peer runs at least this far; a seed unsolved there goes on until solved or the
# budget (the harness's Episodes callback records every episode and the first solve).
SB3_RUNNER = (
    f"HORIZON = {STABILITY_STEPS}\n"
    + r"""
from stable_baselines3 import A2C

class Horizon(Episodes):
    def _on_step(self):
        super()._on_step()
        return not (self.solved is not None and self.num_timesteps >= HORIZON)

env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
model = A2C("MlpPolicy", env, ent_coef=0.0, seed=seed, device="cpu", verbose=0)  # RL Zoo
learn_and_report(model, time.time(), callback=Horizon())
"""
)


def ours(seed, out_dir):
    # --eval-episodes 0: the run's wall time stays training alone, as in the earlier results
    flags = ["--total-timesteps", str(STABILITY_STEPS), "--eval-episodes", "0"]
    return harness.run_script("a2c.py", seed, out_dir, flags)


def sb3(seed, out_dir):
    return harness.run_peer(SB3_RUNNER, seed, BUDGET, 475.0)


if __name__ == "__main__":
    harness.benchmark(
        "a2c",
        {"a2c.py": ours, "SB3 A2C (RL Zoo)": sb3},
        budget=BUDGET,
        title="CartPole-v1, A2C",
    )
