"""Benchmark reinforce.py on CartPole-v1 (harness.py holds the rules): steps and seconds until
the mean return of the last 20 finished training episodes reaches 475, and whether it stays
there, within its 300k-step default budget.

There is no maintained library peer; the in-run reference is textbook REINFORCE (the same
script with `--baseline none --no-normalize-advantages`), which shows what the value baseline
buys. reinforce.py's steps are real transitions only (see golden/curves/README.md).

    python benchmarks/bench_reinforce.py            # the 20 held-out seeds 1001..1020
    python benchmarks/bench_reinforce.py --seeds 1001 1002 --only "reinforce.py" --no-save
"""

from harness import benchmark, run_script

BUDGET = 300_000
NO_EVAL = ("--eval-episodes", "0")  # the run's wall time stays training alone, as before
TEXTBOOK = ("--baseline", "none", "--no-normalize-advantages", *NO_EVAL)


def textbook(seed, out):
    return run_script("reinforce.py", seed, out + "/textbook", TEXTBOOK)


if __name__ == "__main__":
    benchmark(
        "reinforce",
        {
            "reinforce.py": lambda seed, out: run_script("reinforce.py", seed, out, NO_EVAL),
            "textbook REINFORCE (--baseline none --no-normalize-advantages)": textbook,
        },
        BUDGET,
    )
