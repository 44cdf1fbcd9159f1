"""golden/conformance.py against the installed peers; skipped when none is installed.

The main environment needs no peer: Stable-Baselines3, sb3-contrib and TRL come from
benchmarks/requirements.txt, Tianshou and verl from a separate environment (see
golden/README.md). Whatever is installed is run through the table here, and every cell must
be a verdict with its reason; the runner must stay under its 2-minute budget."""

import importlib.util
import time

import pytest

from golden import conformance

INSTALLED = [
    name
    for name, _, module in conformance.PEERS
    if name in conformance.PEER_CELLS and importlib.util.find_spec(module.split(".")[0])
]
if not INSTALLED:
    pytest.skip(
        "no peer installed (pip install -r benchmarks/requirements.txt for SB3, sb3-contrib, TRL)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def table():
    """The table for every installed peer, run once for this file (imports dominate)."""
    start = time.perf_counter()
    rows = conformance.run(INSTALLED)
    return rows, time.perf_counter() - start


def test_conformance_table_runs_for_every_installed_peer(table):
    rows, seconds = table
    assert seconds < 120
    vectors = conformance.vector_names()
    for name, version, cells, _ in rows:
        assert version != "-", f"{name} was found but did not import"
        full = conformance.expand(cells)
        assert full.keys() == set(vectors)
        for vector, (verdict, note) in full.items():
            assert verdict in ("agrees", "differs", "n/a"), (name, vector, verdict)
            assert verdict == "agrees" or note, f"{name} / {vector}: a {verdict} needs a reason"
            assert "unexplained" not in note
        counts = conformance.counts(cells)
        assert sum(counts.values()) == len(vectors)


def test_the_published_verdicts_still_hold(table):
    """The verdicts that golden/README.md publishes, for the peers installed here: a peer
    release that changes one fails this test, and the table is to be re-run and re-published."""
    published = {
        ("Stable-Baselines3", "gae"): "agrees",
        ("Stable-Baselines3", "gaussian_kl"): "differs",
        ("Stable-Baselines3", "obs_normalizer_checkpoint"): "differs",
        ("sb3-contrib", "conjugate_gradient"): "differs",
        ("sb3-contrib", "fisher_vector_product"): "agrees",
        ("TRL", "rlhf_grpo_loss"): "differs",
        ("TRL", "rlhf_loss_aggregation"): "agrees",
        ("TRL", "rlhf_truncated_sampling_logprobs"): "differs",
        ("TRL", "rlhf_grad_accumulation"): "differs",
        ("TRL", "rlhf_dpo_loss"): "agrees",
        ("TRL", "rlhf_reinforce_pp_advantages"): "n/a",
        ("Tianshou", "gae"): "agrees",
        ("verl", "rlhf_loss_aggregation"): "differs",
        ("verl", "rlhf_group_advantages"): "agrees",
        ("verl", "rlhf_reinforce_pp_advantages"): "agrees",
    }
    for name, version, cells, _ in table[0]:
        for (peer, vector), want in published.items():
            if peer == name:
                assert cells[vector][0] == want, (name, version, vector, cells[vector])
