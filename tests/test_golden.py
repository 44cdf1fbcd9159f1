"""Every script's math against the golden vectors in golden/*.json.

The vectors were computed by golden/regenerate.py with independent float64 reference code
(naive loops, closed forms, analytic gradients), not by the scripts. If this test fails,
either a script's math changed by accident, or on purpose, and then the reference and the
vectors change with it (`python -m golden.regenerate`) in the same commit.

Each test declares, with @checks, which vector file it reads and which script functions it
calls; test_every_vector_file_is_documented_and_checked holds that list against every
file's `implemented_by`, so no vector and no implementation goes unchecked."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import ppo_cartpole
import ppo_continuous
import reinforce
import reward_model
import rlhf_ppo_gpt2
import trpo
import trpo_continuous

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
SCRIPTS = {
    m.__name__: m
    for m in (
        ppo_cartpole,
        reinforce,
        trpo,
        reward_model,
        rlhf_ppo_gpt2,
        ppo_continuous,
        trpo_continuous,
    )
}
CHECKED = {}  # vector name -> the script functions its tests call


def checks(name, *functions):
    """Mark a test as the check of vector file `name` against `functions` ("module.func")."""
    CHECKED.setdefault(name, set()).update(functions)
    return lambda test: test


def impl(qualified):
    """The script function "module.func", looked up when the test runs, so that a renamed or
    missing function fails its own tests, with its name, instead of the whole file."""
    module, *path = qualified.split(".")
    fn = SCRIPTS[module]
    for name in path:
        fn = getattr(fn, name, None)
    assert callable(fn), f"{qualified} does not exist: the vectors name it in implemented_by"
    return fn


def load(name):
    return json.loads((GOLDEN / f"{name}.json").read_text())


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def close(actual, expected, tol):
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().numpy()
    np.testing.assert_allclose(np.asarray(actual, dtype=np.float64), expected, **tol)


def cases(name):
    doc = load(name)
    return [(doc["tolerance"], c["inputs"], c["outputs"]) for c in doc["cases"]]


class Linear(nn.Module):
    """The golden vectors' tiny policy: logits = obs @ W, W [d][A] its only parameter, so
    parameters_to_vector gives W flattened row-major, as the vectors define θ."""

    def __init__(self, W):
        super().__init__()
        self.W = nn.Parameter(t(W))

    def forward(self, obs):
        return obs @ self.W


def test_every_vector_file_is_documented_and_checked():
    names = set()
    for path in GOLDEN.glob("*.json"):
        doc = json.loads(path.read_text())
        assert {"equation", "conventions", "tolerance", "cases", "implemented_by"} <= doc.keys()
        assert doc["name"] == path.stem and doc["cases"], path.name
        assert doc["name"] in CHECKED, f"{path.name} is not checked by this file"
        assert set(doc["implemented_by"]) == CHECKED[doc["name"]], (
            f"{path.name}: implemented_by {doc['implemented_by']} but this file checks "
            f"{sorted(CHECKED[doc['name']])}"
        )
        for qualified in doc["implemented_by"]:
            impl(qualified)
        names.add(doc["name"])
    assert names == CHECKED.keys(), f"no vector file for {sorted(CHECKED.keys() - names)}"


# ---------------------------------------------------------------- GAE and PPO


GAE_IMPLEMENTATIONS = ["ppo_cartpole.gae", "trpo.gae"]  # two copies, proven to agree here


@checks("gae", *GAE_IMPLEMENTATIONS)
@pytest.mark.parametrize("fn", GAE_IMPLEMENTATIONS)
@pytest.mark.parametrize("tol,inp,out", cases("gae"))
def test_gae(tol, inp, out, fn):
    term, trunc = t(inp["terminated"]), t(inp["truncated"])
    done = torch.maximum(term, trunc)
    adv = impl(fn)(t(inp["rewards"]), t(inp["values"]), term, done, inp["gamma"], inp["lam"])
    close(adv, out["advantages"], tol)


@checks("ppo_clipped_surrogate", "ppo_cartpole.clipped_surrogate_loss")
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


@checks("ppo_kl_penalty", "ppo_cartpole.kl_penalty_loss")
@pytest.mark.parametrize("tol,inp,out", cases("ppo_kl_penalty"))
def test_ppo_kl_penalty(tol, inp, out):
    logp = t(inp["logp"]).requires_grad_(True)
    loss = ppo_cartpole.kl_penalty_loss(logp, t(inp["logp_old"]), t(inp["adv"]), inp["beta"])
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(logp.grad, out["grad_logp"], tol)


@checks("ppo_value_loss", "ppo_cartpole.value_loss", "reinforce.value_regression_loss")
@pytest.mark.parametrize("tol,inp,out", cases("ppo_value_loss"))
def test_ppo_value_loss(tol, inp, out):
    v = t(inp["values"]).requires_grad_(True)
    loss = ppo_cartpole.value_loss(v, t(inp["values_old"]), t(inp["returns"]), inp["clip_coef"])
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(v.grad, out["grad_values"], tol)
    if inp["clip_coef"] == 0:  # REINFORCE's baseline regression is the unclipped loss
        v.grad = None
        loss = reinforce.value_regression_loss(v, t(inp["returns"]))
        loss.backward()
        close(loss.item(), out["loss"], tol)
        close(v.grad, out["grad_values"], tol)


@checks("explained_variance", "ppo_cartpole.explained_variance")
@pytest.mark.parametrize("tol,inp,out", cases("explained_variance"))
def test_explained_variance(tol, inp, out):
    ev = ppo_cartpole.explained_variance(t(inp["pred"]), t(inp["target"]))
    close(ev, out["explained_variance"], tol)


@checks("categorical_entropy", "ppo_cartpole.categorical_entropy")
@pytest.mark.parametrize("tol,inp,out", cases("categorical_entropy"))
def test_categorical_entropy(tol, inp, out):
    close(ppo_cartpole.categorical_entropy(t(inp["logits"])).item(), out["entropy"], tol)


@checks("k3_kl", "ppo_cartpole.approx_kl")
@pytest.mark.parametrize("tol,inp,out", cases("k3_kl"))
def test_k3_kl(tol, inp, out):
    close(ppo_cartpole.approx_kl(t(inp["logp"]), t(inp["logp_old"])).item(), out["kl"], tol)


@checks("ppo_adaptive_beta", "ppo_cartpole.adapt_kl_beta")
@pytest.mark.parametrize("tol,inp,out", cases("ppo_adaptive_beta"))
def test_ppo_adaptive_beta(tol, inp, out):
    beta, betas = inp["beta0"], []
    for kl in inp["kls"]:
        beta = ppo_cartpole.adapt_kl_beta(beta, kl, inp["kl_target"])
        betas.append(beta)
    assert betas == out["betas"]


# ---------------------------------------------------------------- REINFORCE


@checks("reinforce_reward_to_go", "reinforce.reward_to_go")
@pytest.mark.parametrize("tol,inp,out", cases("reinforce_reward_to_go"))
def test_reinforce_reward_to_go(tol, inp, out):
    ends = torch.tensor(inp["ends"], dtype=torch.bool)
    G = reinforce.reward_to_go(t(inp["rewards"]), ends, t(inp["bootstrap"]), inp["gamma"])
    close(G, out["returns"], tol)


@checks("reinforce_advantage", "reinforce.advantage_estimate")
@pytest.mark.parametrize("tol,inp,out", cases("reinforce_advantage"))
def test_reinforce_advantage(tol, inp, out):
    adv = reinforce.advantage_estimate(
        t(inp["returns"]), t(inp["values"]), inp["baseline"], inp["normalize"]
    )
    close(adv, out["advantages"], tol)


@checks("reinforce_policy_gradient", "reinforce.reinforce_loss")
@pytest.mark.parametrize("tol,inp,out", cases("reinforce_policy_gradient"))
def test_reinforce_policy_gradient(tol, inp, out):
    policy = Linear(inp["W"])
    logp = F.log_softmax(policy(t(inp["obs"])), -1)
    logp = logp.gather(-1, torch.tensor(inp["actions"])[:, None]).squeeze(-1)
    loss = reinforce.reinforce_loss(logp, t(inp["adv"]))
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(policy.W.grad, out["grad_W"], tol)


# ---------------------------------------------------------------- TRPO


@checks("conjugate_gradient", "trpo.conjugate_gradient")
@pytest.mark.parametrize("tol,inp,out", cases("conjugate_gradient"))
def test_conjugate_gradient(tol, inp, out):
    A = t(inp["A"])
    x = trpo.conjugate_gradient(lambda v: A @ v, t(inp["b"]), inp["iters"], inp["tol"])
    close(x, out["x"], tol)


@checks("fisher_vector_product", "trpo.fisher_vector_product")
@pytest.mark.parametrize("tol,inp,out", cases("fisher_vector_product"))
def test_fisher_vector_product(tol, inp, out):
    policy = Linear(inp["W"])
    logits = policy(t(inp["obs"]))  # KL̄ at θ_old with π_θold held fixed
    kl = trpo.categorical_kl(logits.detach(), logits).mean()
    fvp = trpo.fisher_vector_product(kl, list(policy.parameters()), inp["damping"])
    close(fvp(t(inp["v"])), out["Fv"], tol)


@checks("trpo_step", "trpo.trpo_step")
@pytest.mark.parametrize("tol,inp,out", cases("trpo_step"))
def test_trpo_step(tol, inp, out):
    policy = Linear(inp["W"])
    n = policy.W.numel()
    args = SimpleNamespace(max_kl=inp["max_kl"], cg_iters=4 * n, cg_damping=inp["damping"],
                           cg_tol=1e-12, line_search_steps=inp["ls_steps"])  # fmt: skip
    stats = trpo.trpo_step(
        list(policy.parameters()), lambda o: (policy(o),), trpo.categorical_log_prob,
        trpo.categorical_kl, t(inp["obs"]), torch.tensor(inp["actions"]), t(inp["adv"]), args,
    )  # fmt: skip
    assert stats["line_search_steps"] == out["line_search_steps"]
    assert stats["accepted"] == out["accepted"]
    for key in ("kl", "improvement", "expected_improvement", "grad_norm"):
        close(stats[key], out[key], tol)
    close(policy.W, out["W_new"], tol)
    if out["accepted"]:
        # The step scaling: the accepted step is 0.5^k β s, so it gives back the full step β s.
        full = (policy.W.detach() - t(inp["W"])).flatten() / 0.5 ** (out["line_search_steps"] - 1)
        close(full, out["full_step"], tol)
        close(full.norm() / np.linalg.norm(out["s"]), out["beta"], tol)


@checks("categorical_kl", "trpo.categorical_kl")
@pytest.mark.parametrize("tol,inp,out", cases("categorical_kl"))
def test_categorical_kl(tol, inp, out):
    close(trpo.categorical_kl(t(inp["logits_p"]), t(inp["logits_q"])), out["kl"], tol)


@checks("trpo_surrogate", "trpo.surrogate_advantage")
@pytest.mark.parametrize("tol,inp,out", cases("trpo_surrogate"))
def test_trpo_surrogate(tol, inp, out):
    logp = trpo.categorical_log_prob(torch.tensor(inp["actions"]), t(inp["logits"]))
    L = trpo.surrogate_advantage(logp, t(inp["logp_old"]), t(inp["adv"]))
    close(L.item(), out["surrogate"], tol)


# ---------------------------------------------------------------- reward model and RLHF


BT_IMPLEMENTATIONS = ["reward_model.bradley_terry_loss", "rlhf_ppo_gpt2.bradley_terry_loss"]


@checks("bradley_terry_loss", *BT_IMPLEMENTATIONS)
@pytest.mark.parametrize("fn", BT_IMPLEMENTATIONS)
@pytest.mark.parametrize("tol,inp,out", cases("bradley_terry_loss"))
def test_bradley_terry_loss(tol, inp, out, fn):
    rc, rr = t(inp["r_chosen"]).requires_grad_(True), t(inp["r_rejected"]).requires_grad_(True)
    loss = impl(fn)(rc, rr)
    loss.backward()
    close(loss.item(), out["loss"], tol)
    close(rc.grad, out["grad_chosen"], tol)
    close(rr.grad, out["grad_rejected"], tol)


RM_IMPLEMENTATIONS = ["reward_model.RewardModel", "rlhf_ppo_gpt2.RewardModel"]


@checks("reward_normalization", *(f"{rm}.normalize_" for rm in RM_IMPLEMENTATIONS))
@pytest.mark.parametrize("rm", RM_IMPLEMENTATIONS)
@pytest.mark.parametrize("tol,inp,out", cases("reward_normalization"))
def test_reward_normalization(tol, inp, out, rm):
    # normalize_ touches only the linear head, so a stand-in backbone with a config will do.
    backbone = SimpleNamespace(config=SimpleNamespace(n_embd=len(inp["head_weight"])))
    model = impl(rm)(backbone).double()
    model.head.weight.data[0] = t(inp["head_weight"])
    model.head.bias.data[0] = inp["head_bias"]
    mean, std = model.normalize_(t(inp["reference_rewards"]))
    close([mean, std], [out["mean"], out["std"]], tol)
    with torch.no_grad():
        close(model.head(t(inp["hidden"])).squeeze(-1), out["normalized_rewards"], tol)


@checks("reward_model_pair_accuracies", "reward_model.pair_accuracies")
@pytest.mark.parametrize("tol,inp,out", cases("reward_model_pair_accuracies"))
def test_reward_model_pair_accuracies(tol, inp, out):
    label, gold = reward_model.pair_accuracies(
        inp["r_chosen"], inp["r_rejected"], inp["gold_chosen"], inp["gold_rejected"]
    )
    close([label, gold], [out["label_accuracy"], out["gold_accuracy"]], tol)


@checks("rlhf_kl_shaped_rewards", "rlhf_ppo_gpt2.kl_shaped_rewards")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_kl_shaped_rewards"))
def test_rlhf_kl_shaped_rewards(tol, inp, out):
    rewards = rlhf_ppo_gpt2.kl_shaped_rewards(
        t(inp["scores"]), t(inp["logprobs"]), t(inp["ref_logprobs"]), t(inp["mask"]), inp["beta"]
    )
    close(rewards, out["rewards"], tol)


@checks("rlhf_token_gae", "rlhf_ppo_gpt2.token_gae")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_token_gae"))
def test_rlhf_token_gae(tol, inp, out):
    adv, ret = rlhf_ppo_gpt2.token_gae(
        t(inp["rewards"]), t(inp["values"]), t(inp["mask"]), inp["gamma"], inp["lam"]
    )
    close(adv, out["advantages"], tol)
    close(ret, out["returns"], tol)


@checks(
    "rlhf_token_ppo_losses", "rlhf_ppo_gpt2.token_policy_loss", "rlhf_ppo_gpt2.token_value_loss"
)
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_token_ppo_losses"))
def test_rlhf_token_ppo_losses(tol, inp, out):
    mask = t(inp["mask"])
    logprobs = t(inp["logprobs"]).requires_grad_(True)
    loss, clipfrac, approx_kl = rlhf_ppo_gpt2.token_policy_loss(
        logprobs, t(inp["old_logprobs"]), t(inp["advantages"]), mask, inp["clip_coef"]
    )
    loss.backward()
    close(loss.item(), out["policy"]["loss"], tol)
    close(logprobs.grad, out["policy"]["grad_logprobs"], tol)
    close(clipfrac.item(), out["policy"]["clipfrac"], tol)
    close(approx_kl.item(), out["policy"]["approx_kl"], tol)
    for expected in out["value"]:
        values = t(inp["values"]).requires_grad_(True)
        loss = rlhf_ppo_gpt2.token_value_loss(
            values, t(inp["old_values"]), t(inp["returns"]), mask, expected["clip_coef"]
        )
        loss.backward()
        close(loss.item(), expected["loss"], tol)
        close(values.grad, expected["grad_values"], tol)


@checks("rlhf_adaptive_kl_controller", "rlhf_ppo_gpt2.adaptive_kl_coef")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_adaptive_kl_controller"))
def test_rlhf_adaptive_kl_controller(tol, inp, out):
    beta, betas = inp["beta0"], []
    for kl in inp["kls"]:
        beta = rlhf_ppo_gpt2.adaptive_kl_coef(
            beta, kl, inp["kl_target"], inp["n_steps"], inp["horizon"]
        )
        betas.append(beta)
    close(betas, out["betas"], tol)


@checks("rlhf_token_logprobs", "rlhf_ppo_gpt2.token_logprobs", "rlhf_ppo_gpt2.token_entropy")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_token_logprobs"))
def test_rlhf_token_logprobs(tol, inp, out):
    # The script scores in float32 (logits.float()), as a bf16 model would be scored; the
    # float64 vectors are then met to float32 precision.
    tol = {"rtol": 1e-5, "atol": 1e-6}
    logits, tokens = t(inp["logits"]), torch.tensor(inp["tokens"])
    close(rlhf_ppo_gpt2.token_logprobs(logits, tokens, inp["temperature"]), out["logprobs"], tol)
    close(rlhf_ppo_gpt2.token_entropy(logits, inp["temperature"]), out["entropy"], tol)


@checks("rlhf_masked_whiten", "rlhf_ppo_gpt2.masked_whiten")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_masked_whiten"))
def test_rlhf_masked_whiten(tol, inp, out):
    close(rlhf_ppo_gpt2.masked_whiten(t(inp["x"]), t(inp["mask"])), out["whitened"], tol)


@checks("rlhf_sft_loss", "rlhf_ppo_gpt2.sft_loss")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_sft_loss"))
def test_rlhf_sft_loss(tol, inp, out):
    tol = {"rtol": 1e-5, "atol": 1e-6}  # computed in float32 by the script, see above
    loss = rlhf_ppo_gpt2.sft_loss(
        t(inp["logits"]), torch.tensor(inp["labels"]), torch.tensor(inp["loss_mask"])
    )
    close(loss.item(), out["loss"], tol)


@checks("rlhf_masks", "rlhf_ppo_gpt2.positions_from_mask", "rlhf_ppo_gpt2.response_mask_after_eos")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_masks"))
def test_rlhf_masks(tol, inp, out):
    positions = rlhf_ppo_gpt2.positions_from_mask(torch.tensor(inp["attention_mask"]))
    assert positions.tolist() == out["positions"]
    mask = rlhf_ppo_gpt2.response_mask_after_eos(torch.tensor(inp["responses"]), inp["eos_id"])
    assert mask.tolist() == out["response_mask"]


# ---------------------------------------------------------------- A2C (a2c.py)
# A separate block: imported here, not at the top, so that this block merges alone.

SCRIPTS["a2c"] = __import__("a2c")


@checks("a2c_n_step_return", "a2c.gae")
@pytest.mark.parametrize("tol,inp,out", cases("a2c_n_step_return"))
def test_a2c_n_step_return(tol, inp, out):
    term, trunc = t(inp["terminated"]), t(inp["truncated"])
    values = t(inp["values"])
    adv = impl("a2c.gae")(t(inp["rewards"]), values, term, torch.maximum(term, trunc),
                          inp["gamma"], 1.0)  # fmt: skip
    close(adv, out["advantages"], tol)
    close(adv + values[:-1], out["returns"], tol)


@checks("a2c_loss", "a2c.a2c_loss")
@pytest.mark.parametrize("tol,inp,out", cases("a2c_loss"))
def test_a2c_loss(tol, inp, out):
    logits, v = t(inp["logits"]).requires_grad_(True), t(inp["values"]).requires_grad_(True)
    logp = F.log_softmax(logits, -1).gather(-1, torch.tensor(inp["actions"])[:, None])[:, 0]
    loss, pg, vf, ent = impl("a2c.a2c_loss")(
        logp, logits, v, t(inp["advantages"]), t(inp["returns"]), inp["vf_coef"], inp["ent_coef"]
    )
    loss.backward()
    for name, value in [("loss", loss), ("pg_loss", pg), ("v_loss", vf), ("entropy", ent)]:
        close(value.item(), out[name], tol)
    close(logits.grad, out["grad_logits"], tol)
    close(v.grad, out["grad_values"], tol)


@checks("a2c_rmsprop", "a2c.make_optimizer")
@pytest.mark.parametrize("tol,inp,out", cases("a2c_rmsprop"))
def test_a2c_rmsprop(tol, inp, out):
    args = SimpleNamespace(
        optimizer="rmsprop", learning_rate=inp["learning_rate"], rms_alpha=inp["alpha"],
        optimizer_eps=inp["eps"],
    )  # fmt: skip
    theta = t(inp["theta"]).requires_grad_(True)
    optimizer = impl("a2c.make_optimizer")([theta], args)
    for grad, expected in zip(inp["grads"], out["thetas"], strict=True):
        theta.grad = t(grad)
        optimizer.step()
        close(theta, expected, tol)


# ---------------------------------------------------------------- continuous control (Gaussian)


GAUSSIAN = ["ppo_continuous", "trpo_continuous"]  # two copies, proven to agree here


@checks("gaussian_log_prob", *(f"{m}.gaussian_log_prob" for m in GAUSSIAN))
@pytest.mark.parametrize("module", GAUSSIAN)
@pytest.mark.parametrize("tol,inp,out", cases("gaussian_log_prob"))
def test_gaussian_log_prob(tol, inp, out, module):
    fn = impl(f"{module}.gaussian_log_prob")
    close(fn(t(inp["action"]), t(inp["mean"]), t(inp["log_std"])), out["log_prob"], tol)


@checks("gaussian_entropy", "ppo_continuous.gaussian_entropy")
@pytest.mark.parametrize("tol,inp,out", cases("gaussian_entropy"))
def test_gaussian_entropy(tol, inp, out):
    close(ppo_continuous.gaussian_entropy(t(inp["log_std"])), out["entropy"], tol)


@checks("gaussian_kl", "trpo_continuous.gaussian_kl")  # only TRPO's trust region needs the KL
@pytest.mark.parametrize("module", ["trpo_continuous"])
@pytest.mark.parametrize("tol,inp,out", cases("gaussian_kl"))
def test_gaussian_kl(tol, inp, out, module):
    args = (t(inp[k]) for k in ("mean_p", "log_std_p", "mean_q", "log_std_q"))
    close(impl(f"{module}.gaussian_kl")(*args), out["kl"], tol)


@checks("rlhf_group_advantages", "rlhf_ppo_gpt2.rloo_advantages", "rlhf_ppo_gpt2.group_advantages")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_group_advantages"))
def test_rlhf_group_advantages(tol, inp, out):
    rewards, k = t(inp["rewards"]), inp["k"]
    close(rlhf_ppo_gpt2.rloo_advantages(rewards, k), out["rloo"], tol)
    grpo = rlhf_ppo_gpt2.group_advantages(rewards, k, scale_by_std=True, eps=inp["eps"])
    close(grpo, out["grpo"], tol)
    close(rlhf_ppo_gpt2.group_advantages(rewards, k, scale_by_std=False), out["dr_grpo"], tol)


@checks("rlhf_kl_estimators", "rlhf_ppo_gpt2.kl_estimators")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_kl_estimators"))
def test_rlhf_kl_estimators(tol, inp, out):
    logp, ref = t(inp["logprobs"]), t(inp["ref_logprobs"])
    k1, k2, k3 = rlhf_ppo_gpt2.kl_estimators(logp, ref)
    for name, value in (("k1", k1), ("k2", k2), ("k3", k3)):
        close(value, out[name], tol)
    p = logp.exp()  # the case enumerates the whole categorical
    close((p * k1).sum(), out["kl"], tol)
    close((p * k3).sum(), out["kl"], tol)
    close((p * k2).sum(), out["expected_k2"], tol)


@checks("rlhf_grpo_loss", "rlhf_ppo_gpt2.grpo_policy_loss")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_grpo_loss"))
def test_rlhf_grpo_loss(tol, inp, out):
    logp = t(inp["logprobs"]).requires_grad_(True)
    loss, _, _ = rlhf_ppo_gpt2.grpo_policy_loss(
        logp, t(inp["old_logprobs"]), t(inp["ref_logprobs"]), t(inp["advantages"]),
        t(inp["mask"]), inp["clip_coef"], inp["beta"], inp["constant"],
    )  # fmt: skip
    close(loss, out["loss"], tol)
    close(torch.autograd.grad(loss, logp)[0], out["grad_logprobs"], tol)


# ---------------------------------------------------------------- the field's pitfalls (issue 32)
# Vectors for bug classes that other implementations have hit; tests/test_known_pitfalls.py
# holds one test per class, each proven to fail on a broken variant.

F32 = {"rtol": 1e-5, "atol": 1e-6}  # for the functions that compute in float32 on purpose


@checks("rlhf_truncated_sampling_logprobs", "rlhf_ppo_gpt2.token_logprobs")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_truncated_sampling_logprobs"))
def test_rlhf_truncated_sampling_logprobs(tol, inp, out):
    # The script samples at a temperature with top_k=0 and top_p=1 (generate_responses), so
    # its token_logprobs must be the sampler's log-prob whenever no truncation applies. Under
    # top-k/top-p it gives the full-vocabulary log-prob: the script has no function that
    # replays a truncation, because it never samples with one.
    logits, tokens = t(inp["logits"]), torch.tensor(inp["tokens"])
    logp = rlhf_ppo_gpt2.token_logprobs(logits, tokens, inp["temperature"]).double()
    close(logp, out["logprobs_full"], F32)
    if inp["top_k"] == 0 and inp["top_p"] == 1.0:
        close(logp, out["logprobs_sampling"], F32)
        close((logp - t(out["logprobs_sampling"])).exp(), out["ratio_replayed"], F32)
    else:
        ratio = (logp - t(out["logprobs_sampling"])).exp()
        close(ratio, out["ratio_full_over_sampling"], F32)
        assert (ratio < 1 - 1e-3).any(), "a truncated sampler must make the full-vocab ratio < 1"


@checks("rlhf_loss_aggregation", "rlhf_ppo_gpt2.masked_mean", "rlhf_ppo_gpt2.grpo_policy_loss")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_loss_aggregation"))
def test_rlhf_loss_aggregation(tol, inp, out):
    ell, mask = t(inp["per_token_loss"]), t(inp["mask"])
    x = ell.clone().requires_grad_(True)
    loss = rlhf_ppo_gpt2.masked_mean(x * mask, mask)  # the token mean of token_policy_loss
    close(loss, out["token-mean"]["loss"], tol)
    close(torch.autograd.grad(loss, x)[0], out["token-mean"]["grad_per_token_loss"], tol)
    # grpo_policy_loss with β = 0 at ratio 1 has ℓ_t = −Â_t, so Â = −ℓ reproduces any ℓ; and
    # ∂L/∂log π_t = ∂L/∂ℓ_t · ∂(−Â_t ρ_t)/∂log π_t = ∂L/∂ℓ_t · ℓ_t at ρ = 1.
    for mode, constant in [
        ("seq-mean-token-mean", 0),
        ("seq-mean-token-sum-norm", inp["constant"]),
    ]:
        logp = torch.zeros_like(ell).requires_grad_(True)
        loss, _, _ = rlhf_ppo_gpt2.grpo_policy_loss(
            logp, logp.detach(), logp.detach(), -ell, mask, 0.2, 0.0, constant
        )
        close(loss, out[mode]["loss"], tol)
        close(torch.autograd.grad(loss, logp)[0], ell * t(out[mode]["grad_per_token_loss"]), tol)


@checks(
    "rlhf_grad_accumulation",
    "rlhf_ppo_gpt2.masked_mean",
    "rlhf_ppo_gpt2.token_share",
    "rlhf_ppo_gpt2.grpo_policy_loss",
)
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_grad_accumulation"))
def test_rlhf_grad_accumulation(tol, inp, out, monkeypatch):
    # The script splits a minibatch over W data-parallel ranks, whose gradients DDP averages:
    # the same sum as G micro-batches, each divided by G. Each micro-batch is played as one rank
    # here, with the all-reduce of the token counts done by hand.
    ell, mask, micro = t(inp["per_token_loss"]), t(inp["mask"]), inp["micro_batches"]
    G = len(micro)
    monkeypatch.setattr(rlhf_ppo_gpt2, "world", lambda: (1, G))
    monkeypatch.setattr(rlhf_ppo_gpt2, "all_reduce_sum", lambda n: mask.sum().to(n.dtype))
    x = ell.clone().requires_grad_(True)
    # token mean: masked_mean × token_share (the script's ppo/rloo path) is the large batch's
    parts = [
        rlhf_ppo_gpt2.masked_mean(x[rows] * mask[rows], mask[rows])
        * rlhf_ppo_gpt2.token_share(mask[rows]).double()
        / G
        for rows in micro
    ]
    want = out["token-mean"]
    close([p.item() for p in parts], want["micro_losses"], tol)
    close(torch.autograd.grad(sum(parts), x)[0], want["grad_per_token_loss"], tol)
    # ... and without token_share it would be the naive, wrong one
    naive = sum(rlhf_ppo_gpt2.masked_mean(ell[rows] * mask[rows], mask[rows]) / G for rows in micro)
    close(naive, want["naive_loss"], tol)
    assert abs(naive - want["loss"]) > 1e-3
    # GRPO and Dr. GRPO (constant = rows × max length): per micro-batch, then averaged. That is
    # the large batch only when every micro-batch holds as many responses (check_world_size
    # makes every rank hold as many); the vector's naive_* is exactly this.
    for mode, per_row in [
        ("seq-mean-token-mean", 0),
        ("seq-mean-token-sum-norm", inp["max_length"]),
    ]:
        logp = torch.zeros_like(ell).requires_grad_(True)
        total = 0.0
        for rows in micro:
            loss, _, _ = rlhf_ppo_gpt2.grpo_policy_loss(
                logp[rows], logp[rows].detach(), logp[rows].detach(), -ell[rows], mask[rows],
                0.2, 0.0, per_row * len(rows),
            )  # fmt: skip
            total = total + loss / G
        close(total, out[mode]["naive_loss"], tol)
        if len({len(rows) for rows in micro}) == 1:
            close(total, out[mode]["loss"], tol)


NORMALIZERS = ["ppo_continuous", "trpo_continuous"]  # two copies, proven to agree here


@checks(
    "obs_normalizer_checkpoint",
    "ppo_continuous.update_moments",
    "ppo_continuous.normalize_obs",
    *(f"{m}.Normalizer" for m in NORMALIZERS),
)
@pytest.mark.parametrize("module", NORMALIZERS)
@pytest.mark.parametrize("tol,inp,out", cases("obs_normalizer_checkpoint"))
def test_obs_normalizer_checkpoint(tol, inp, out, module, tmp_path):
    from dataclasses import asdict

    script = SCRIPTS[module]
    stream, W = [np.array(b) for b in inp["stream"]], np.array(inp["W"])
    args = script.Args(norm_obs=True, clip_obs=inp["clip"])
    trained = impl(f"{module}.Normalizer")(W.shape[0], 1, args)
    for batch in stream:
        trained.observe(batch)
    # written with the args as the script writes model.pt, read back as --eval-checkpoint
    # reads it (weights_only), into a fresh normaliser
    path = str(tmp_path / "model.pt")
    script.save_atomic(dict(args=asdict(args), normalizer=trained.state_dict()), path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    loaded = script.Normalizer(W.shape[0], 1, script.Args(**ckpt["args"]))
    loaded.load_state_dict(ckpt["normalizer"])
    mean, var = loaded.frozen_obs_stats()
    close(mean, out["mean"], tol)
    close(var, out["var"], tol)
    assert loaded.obs[2] == out["count"]
    eval_obs = np.array(inp["eval_obs"])
    obs = script.normalize_obs(eval_obs, mean, var, inp["clip"])  # float32, as the agent's input
    close(obs, out["normalized_eval_obs"], F32)
    close(obs.astype(np.float64) @ W, out["actions"], F32)
    before = script.normalize_obs(eval_obs, *trained.frozen_obs_stats(), inp["clip"])
    assert np.array_equal(before, obs), "the reloaded statistics must give identical inputs"
    if module == "ppo_continuous":  # update_moments alone, one batch at a time, from count 0
        moments = (np.zeros(W.shape[0]), np.ones(W.shape[0]), 0)
        for batch in stream:
            moments = ppo_continuous.update_moments(*moments, batch)
        close(moments[0], out["mean"], tol)
        close(moments[1], out["var"], tol)
        assert moments[2] == out["count"]


# ---------------------------------------------------------------- DPO and REINFORCE++ (issue 34)


@checks("rlhf_dpo_loss", "rlhf_ppo_gpt2.dpo_loss")
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_dpo_loss"))
def test_rlhf_dpo_loss(tol, inp, out):
    chosen = t(inp["logp_chosen"]).requires_grad_(True)
    rejected = t(inp["logp_rejected"]).requires_grad_(True)
    loss, margin = rlhf_ppo_gpt2.dpo_loss(
        chosen, rejected, t(inp["ref_chosen"]), t(inp["ref_rejected"]), inp["beta"]
    )
    close(loss, out["loss"], tol)
    close(margin, out["margin"], tol)
    grads = torch.autograd.grad(loss, [chosen, rejected])
    close(grads[0], out["grad_logp_chosen"], tol)
    close(grads[1], out["grad_logp_rejected"], tol)


@checks(
    "rlhf_reinforce_pp_advantages",
    "rlhf_ppo_gpt2.kl_shaped_rewards",
    "rlhf_ppo_gpt2.reinforce_pp_advantages",
)
@pytest.mark.parametrize("tol,inp,out", cases("rlhf_reinforce_pp_advantages"))
def test_rlhf_reinforce_pp_advantages(tol, inp, out):
    mask = t(inp["mask"])
    rewards = rlhf_ppo_gpt2.kl_shaped_rewards(
        t(inp["scores"]), t(inp["logprobs"]), t(inp["ref_logprobs"]), mask, inp["beta"]
    )
    close(rewards, out["rewards"], tol)
    close(
        rlhf_ppo_gpt2.reinforce_pp_advantages(rewards, mask, inp["gamma"]), out["advantages"], tol
    )
