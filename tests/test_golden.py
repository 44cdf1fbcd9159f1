"""Every script's math against the golden vectors in golden/*.json.

The vectors were computed by golden/regenerate.py with independent float64 reference code
(naive loops, closed forms), not by the scripts. If this test fails, either a script's math
changed by accident, or on purpose, and then the reference and the vectors change with it
(`python -m golden.regenerate`) in the same commit."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import ppo_cartpole

GOLDEN = Path(__file__).resolve().parents[1] / "golden"


def load(name):
    return json.loads((GOLDEN / f"{name}.json").read_text())


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(actual, expected, tol):
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, **tol)


def cases(name):
    doc = load(name)
    return [(doc["tolerance"], c["inputs"], c["outputs"]) for c in doc["cases"]]


def test_every_vector_file_is_documented_and_checked():
    checked = {"gae", "ppo_clipped_surrogate", "ppo_value_loss", "categorical_entropy",
               "k3_kl", "ppo_adaptive_beta"}  # fmt: skip
    for path in GOLDEN.glob("*.json"):
        doc = json.loads(path.read_text())
        assert {"equation", "conventions", "tolerance", "cases", "implemented_by"} <= doc.keys()
        assert doc["name"] in checked, f"{path.name} is not checked by this file"


@pytest.mark.parametrize("tol,inp,out", cases("gae"))
def test_gae(tol, inp, out):
    term, trunc = t(inp["terminated"]), t(inp["truncated"])
    done = torch.maximum(term, trunc)
    adv = ppo_cartpole.gae(t(inp["rewards"]), t(inp["values"]), term, done, inp["gamma"],
                           inp["lam"])  # fmt: skip
    close(adv, out["advantages"], tol)


@pytest.mark.parametrize("tol,inp,out", cases("ppo_clipped_surrogate"))
def test_ppo_clipped_surrogate(tol, inp, out):
    logp = t(inp["logp"]).requires_grad_(True)
    loss, clipfrac = ppo_cartpole.clipped_surrogate_loss(
        logp, t(inp["logp_old"]), t(inp["adv"]), inp["clip_coef"]
    )
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(logp.grad, out["grad_logp"], tol)
    close(clipfrac.item(), out["clipfrac"], tol)


@pytest.mark.parametrize("tol,inp,out", cases("ppo_value_loss"))
def test_ppo_value_loss(tol, inp, out):
    v = t(inp["values"]).requires_grad_(True)
    loss = ppo_cartpole.value_loss(v, t(inp["values_old"]), t(inp["returns"]), inp["clip_coef"])
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(v.grad, out["grad_values"], tol)


@pytest.mark.parametrize("tol,inp,out", cases("categorical_entropy"))
def test_categorical_entropy(tol, inp, out):
    close(ppo_cartpole.categorical_entropy(t(inp["logits"])).item(), out["entropy"], tol)


@pytest.mark.parametrize("tol,inp,out", cases("k3_kl"))
def test_k3_kl(tol, inp, out):
    close(ppo_cartpole.approx_kl(t(inp["logp"]), t(inp["logp_old"])).item(), out["kl"], tol)


@pytest.mark.parametrize("tol,inp,out", cases("ppo_adaptive_beta"))
def test_ppo_adaptive_beta(tol, inp, out):
    beta, betas = inp["beta0"], []
    for kl in inp["kls"]:
        beta = ppo_cartpole.adapt_kl_beta(beta, kl, inp["kl_target"])
        betas.append(beta)
    assert betas == out["betas"]
