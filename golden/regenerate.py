"""Rewrite the golden test vectors: python -m golden.regenerate

The outputs are computed here, in float64 numpy with naive loops and closed forms, and
*not* by the scripts. tests/test_golden.py then checks every script's functions against
these files, so a change in a script's math fails the tests until it is made deliberately:
edit this file (the reference), regenerate, and let the diff show the change in review.
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def write(name, equation, conventions, tolerance, cases, implemented_by):
    doc = {
        "name": name,
        "equation": equation,
        "conventions": conventions,
        "tolerance": tolerance,
        "implemented_by": implemented_by,
        "cases": cases,
    }
    (HERE / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


def r(x, digits=6):
    """Inputs are rounded to a few digits so that they print exactly in JSON."""
    return np.round(np.asarray(x, dtype=np.float64), digits).tolist()


# ---------------------------------------------------------------- GAE


def naive_gae(rewards, values, terminated, truncated, gamma, lam):
    """Â_t = Σ_l (γλ)^l δ_{t+l} summed explicitly to the end of t's episode or the rollout."""
    rewards, values = np.asarray(rewards), np.asarray(values)
    done = np.logical_or(terminated, truncated)
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        delta = [
            rewards[t, n] + gamma * values[t + 1, n] * (1 - terminated[t][n]) - values[t, n]
            for t in range(T)
        ]
        for t in range(T):
            k = t
            while True:
                adv[t, n] += (gamma * lam) ** (k - t) * delta[k]
                if done[k, n] or k == T - 1:
                    break
                k += 1
    return adv


def gae_vectors(rng):
    cases = []
    for T, N, gamma, lam in [(5, 1, 0.99, 0.95), (12, 3, 0.98, 0.8), (8, 2, 0.9, 1.0)]:
        rewards, values = r(rng.normal(size=(T, N))), r(rng.normal(size=(T + 1, N)))
        terminated = (rng.random((T, N)) < 0.15).astype(int)
        truncated = ((rng.random((T, N)) < 0.15) & (terminated == 0)).astype(int)
        inputs = dict(rewards=rewards, values=values, terminated=terminated.tolist(),
                      truncated=truncated.tolist(), gamma=gamma, lam=lam)  # fmt: skip
        adv = naive_gae(rewards, values, terminated, truncated, gamma, lam)
        cases.append({"inputs": inputs, "outputs": {"advantages": adv.tolist()}})
    write(
        "gae",
        "δ_t = r_t + γ V(s_{t+1}) (1 − terminated_t) − V(s_t);  "
        "Â_t = δ_t + γ λ (1 − done_t) Â_{t+1},  done_t = terminated_t or truncated_t",
        "Arrays are time-major [T][N] (N parallel envs). values has T+1 rows: values[t+1] is "
        "V of the observation after step t; after a truncation that is V(final observation), "
        "which is bootstrapped, while after a termination it is ignored. The recursion stops "
        "at every episode end and at the end of the rollout.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["ppo_cartpole.gae"],
    )


# ---------------------------------------------------------------- PPO losses


def ppo_vectors(rng):
    n, eps = 12, 0.2
    logp_old = r(np.log(rng.uniform(0.05, 0.95, n)))
    ratio = np.array([0.5, 0.75, 0.85, 0.95, 1.0, 1.05, 1.15, 1.25, 1.5, 0.7, 1.3, 1.0])
    logp = r(np.array(logp_old) + np.log(ratio))
    adv = r(np.array([1, -1, 2, -2, 1, -1, 0.5, -0.5, 1.5, 1, -1, 0]) * 1.0)
    rt = np.exp(np.array(logp) - np.array(logp_old))
    clipped = np.clip(rt, 1 - eps, 1 + eps)
    a = np.array(adv)
    loss = -np.mean(np.minimum(rt * a, clipped * a))
    # The min picks the clipped (constant) branch exactly when r left [1−ε, 1+ε] in the
    # direction the advantage rewards; there the gradient is 0.
    active = np.where(a >= 0, rt <= 1 + eps, rt >= 1 - eps)
    grad = np.where(active, -rt * a / n, 0.0)
    clipfrac = np.mean(np.abs(rt - 1) > eps)
    write(
        "ppo_clipped_surrogate",
        "r_t = exp(log π_θ(a_t|s_t) − log π_θold(a_t|s_t));  "
        "loss = −mean_t min(r_t Â_t, clip(r_t, 1−ε, 1+ε) Â_t);  "
        "clipfrac = mean_t [|r_t − 1| > ε]",
        "Inputs are per-sample log-probabilities of the taken actions and (already "
        "normalised) advantages. grad_logp is ∂loss/∂log π_θ(a_t|s_t). At the kink (r exactly "
        "1 ± ε) the unclipped branch is taken.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logp=logp, logp_old=logp_old, adv=adv, clip_coef=eps),
          "outputs": dict(loss=loss, grad_logp=grad.tolist(), clipfrac=clipfrac)}],
        ["ppo_cartpole.clipped_surrogate_loss"],
    )  # fmt: skip

    v_old = r(rng.normal(size=8))
    ret = r(rng.normal(size=8))
    v = r(np.array(v_old) + np.array([-0.5, -0.3, -0.1, 0.0, 0.1, 0.3, 0.5, 0.25]))
    cases = []
    for clip in (0.0, 0.2):
        va, vo, tg = map(np.array, (v, v_old, ret))
        unclipped = (va - tg) ** 2
        if clip > 0:
            vc = vo + np.clip(va - vo, -clip, clip)
            both = np.maximum(unclipped, (vc - tg) ** 2)
            grad = np.where(unclipped >= (vc - tg) ** 2, va - tg, np.where(
                np.abs(va - vo) < clip, vc - tg, 0.0)) / len(va)  # fmt: skip
        else:
            both, grad = unclipped, (va - tg) / len(va)
        inputs = dict(values=v, values_old=v_old, returns=ret, clip_coef=clip)
        outputs = dict(loss=0.5 * both.mean(), grad_values=grad.tolist())
        cases.append({"inputs": inputs, "outputs": outputs})
    write(
        "ppo_value_loss",
        "unclipped: ½ mean (V − V^targ)²;  clipped (ε > 0): "
        "½ mean max((V − V^targ)², (V_old + clip(V − V_old, −ε, ε) − V^targ)²)",
        "clip_coef = 0 means no clipping. grad_values is ∂loss/∂V.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["ppo_cartpole.value_loss"],
    )

    logits = r(rng.normal(size=(5, 3)) * 2)
    lg = np.array(logits)
    logpi = lg - np.log(np.exp(lg).sum(-1, keepdims=True))
    ent = -(np.exp(logpi) * logpi).sum(-1).mean()
    write(
        "categorical_entropy",
        "S = mean_s −Σ_a π(a|s) log π(a|s),  π = softmax(logits)",
        "logits are [batch][actions].",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": {"logits": logits}, "outputs": {"entropy": ent}}],
        ["ppo_cartpole.categorical_entropy"],
    )

    lp_old = r(np.log(rng.uniform(0.05, 0.95, 10)))
    lp = r(np.array(lp_old) + rng.normal(scale=0.3, size=10))
    log_r = np.array(lp) - np.array(lp_old)
    write(
        "k3_kl",
        "log r = log π_θ(a) − log π_old(a);  k3 = mean((r − 1) − log r)",
        "An estimate of KL(π_old ‖ π_θ) from actions sampled under π_old (Schulman, "
        "'Approximating KL divergence', 2020).",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": {"logp": lp, "logp_old": lp_old},
          "outputs": {"kl": float(np.mean(np.exp(log_r) - 1 - log_r))}}],
        ["ppo_cartpole.approx_kl"],
    )  # fmt: skip


def ppo_beta_vectors():
    kls = [0.001, 0.004, 0.008, 0.012, 0.02, 0.05, 0.016, 0.006, 0.0067, 0.01]
    beta, betas = 1.0, []
    for d in kls:
        if d < 0.01 / 1.5:
            beta /= 2
        elif d > 0.01 * 1.5:
            beta *= 2
        betas.append(beta)
    write(
        "ppo_adaptive_beta",
        "after each update: β ← β/2 if d < d_targ/1.5;  β ← 2β if d > 1.5 d_targ",
        "Starting from beta0, betas[i] is β after the update whose measured KL is kls[i].",
        {"rtol": 0, "atol": 0},
        [{"inputs": {"beta0": 1.0, "kl_target": 0.01, "kls": kls}, "outputs": {"betas": betas}}],
        ["ppo_cartpole.adapt_kl_beta"],
    )


def main():
    rng = np.random.default_rng(2026)
    gae_vectors(rng)
    ppo_vectors(rng)
    ppo_beta_vectors()
    print(f"wrote {len(list(HERE.glob('*.json')))} vector files to {HERE}")


if __name__ == "__main__":
    main()
