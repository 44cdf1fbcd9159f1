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
    (HERE / f"{name}.json").write_text(to_json(doc) + "\n")


def to_json(x, indent=""):
    """JSON with one line per innermost list, so a [T][N] array reads as a table. Floats are
    written with repr, which round-trips float64 exactly."""
    if isinstance(x, dict):
        inner = indent + "  "
        items = [f"{inner}{json.dumps(k)}: {to_json(v, inner)}" for k, v in x.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(x, list) and any(isinstance(v, (list, dict)) for v in x):
        inner = indent + "  "
        return "[\n" + ",\n".join(inner + to_json(v, inner) for v in x) + "\n" + indent + "]"
    return json.dumps(x, ensure_ascii=False)


def r(x, digits=6):
    """Inputs are rounded to a few digits so that they print exactly in JSON."""
    return (np.round(np.asarray(x, dtype=np.float64), digits) + 0.0).tolist()  # no -0.0


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
        ["ppo_cartpole.gae", "trpo.gae"],
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
        "clip_coef = 0 means no clipping. grad_values is ∂loss/∂V. reinforce's baseline "
        "regression loss is the clip_coef = 0 case (it takes no values_old).",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["ppo_cartpole.value_loss", "reinforce.value_regression_loss"],
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


def explained_variance_vectors(rng):
    target = r(rng.normal(size=9) * 2)
    pred = r(np.array(target) + rng.normal(size=9))
    t, p = np.array(target), np.array(pred)
    write(
        "explained_variance",
        "EV = 1 − Var[V^targ − V] / Var[V^targ]",
        "A diagnostic of the critic: 1 is perfect, ≤ 0 is no better than a constant. The "
        "ratio does not depend on the variance's n or n − 1 as long as both use the same.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(pred=pred, target=target),
          "outputs": {"explained_variance": float(1 - np.var(t - p) / np.var(t))}}],
        ["ppo_cartpole.explained_variance"],
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


def ppo_kl_penalty_vectors(rng):
    n, beta = 10, 0.7
    lp_old = r(np.log(rng.uniform(0.05, 0.95, n)))
    lp = r(np.array(lp_old) + rng.normal(scale=0.3, size=n))
    adv = r(rng.normal(size=n))
    x, a = np.array(lp) - np.array(lp_old), np.array(adv)
    rt = np.exp(x)
    loss = -np.mean(rt * a) + beta * np.mean(rt - 1 - x)
    # ∂/∂log π_t of −r_t Â_t + β((r_t − 1) − log r_t), each over n
    grad = (-rt * a + beta * (rt - 1)) / n
    write(
        "ppo_kl_penalty",
        "r_t = exp(log π_θ − log π_θold);  loss = −mean_t r_t Â_t + β mean_t ((r_t − 1) − log r_t)",
        "PPO's adaptive-KL-penalty objective (PPO paper, section 4) as a loss, with the KL "
        "estimated by k3 on the sampled actions. grad_logp is ∂loss/∂log π_θ(a_t|s_t).",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logp=lp, logp_old=lp_old, adv=adv, beta=beta),
          "outputs": dict(loss=loss, grad_logp=grad.tolist())}],
        ["ppo_cartpole.kl_penalty_loss"],
    )  # fmt: skip


# ---------------------------------------------------------------- shared numpy helpers


def log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def softmax(z):
    return np.exp(log_softmax(z))


# ---------------------------------------------------------------- REINFORCE


def naive_reward_to_go(rewards, ends, bootstrap, gamma):
    """G_t = Σ_{k=t}^{e} γ^{k−t} r_k + γ^{e−t+1} bootstrap_e, e = the first end at or after t;
    no bootstrap when the rollout stops before any end."""
    T, N = np.shape(rewards)
    returns = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            for k in range(t, T):
                returns[t, n] += gamma ** (k - t) * rewards[k][n]
                if ends[k][n]:
                    returns[t, n] += gamma ** (k - t + 1) * bootstrap[k][n]
                    break
    return returns


def reinforce_vectors(rng):
    cases = []
    for T, N, gamma in [(6, 1, 0.9), (10, 3, 0.99), (5, 2, 1.0)]:
        rewards = r(rng.normal(size=(T, N)))
        ends = (rng.random((T, N)) < 0.25).astype(int)
        ends[-1, 0] = 1  # one env's last step ends an episode, the others stop mid-episode
        # Bootstrap values sit on every row; only those on episode ends may count.
        bootstrap = r(rng.normal(size=(T, N)) * (rng.random((T, N)) < 0.6))
        inputs = dict(rewards=rewards, ends=ends.tolist(), bootstrap=bootstrap, gamma=gamma)
        G = naive_reward_to_go(rewards, ends, bootstrap, gamma)
        cases.append({"inputs": inputs, "outputs": {"returns": G.tolist()}})
    write(
        "reinforce_reward_to_go",
        "G_t = r_t + γ G_{t+1} inside an episode;  G_t = r_t + γ bootstrap_t where ends_t = 1",
        "Time-major [T][N]. rewards[t] is the reward that followed the action at t. ends_t = 1 "
        "marks the last step of an episode; bootstrap_t is read only there (0 for a "
        "termination, V(final observation) for a time-limit truncation; any other entries are "
        "ignored). A rollout that stops without an end gets no bootstrap: G = Σ_{k≥t} γ^{k−t} "
        "r_k to the last row.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["reinforce.reward_to_go"],
    )

    returns, values = r(rng.normal(size=8) * 3 + 5), r(rng.normal(size=8) * 3 + 5)
    cases = []
    for baseline in ("none", "mean", "value"):
        for normalize in (False, True):
            G, V = np.array(returns), np.array(values)
            adv = {"none": G, "mean": G - G.mean(), "value": G - V}[baseline]
            if normalize:
                adv = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
            inputs = dict(returns=returns, values=values, baseline=baseline, normalize=normalize)
            cases.append({"inputs": inputs, "outputs": {"advantages": adv.tolist()}})
    write(
        "reinforce_advantage",
        "Â_t = G_t − b_t,  b_t = 0 (none), mean_batch G (mean) or V(s_t) (value);  "
        "normalised: Â ← (Â − mean Â) / (std Â + 1e-8)",
        "std is the sample standard deviation (Bessel's correction, n − 1), as torch.std.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["reinforce.advantage_estimate"],
    )

    cases = []
    for B, d, A in [(6, 4, 2), (5, 3, 3)]:
        obs, W = r(rng.normal(size=(B, d))), r(rng.normal(size=(d, A)) * 0.5)
        actions, adv = rng.integers(0, A, B), r(rng.normal(size=B))
        p = softmax(np.array(obs) @ np.array(W))
        logp = np.log(p[np.arange(B), actions])
        a = np.array(adv)
        # ∇_W log π(a|s) = s ⊗ (e_a − π(·|s)) for logits s·W
        onehot = np.eye(A)[actions]
        grad = -np.mean(
            [np.outer(s, e - q) * ai for s, e, q, ai in zip(obs, onehot, p, a, strict=True)], 0
        )
        inputs = dict(obs=obs, W=W, actions=actions.tolist(), adv=adv)
        outputs = dict(loss=-np.mean(logp * a), grad_W=grad.tolist())
        cases.append({"inputs": inputs, "outputs": outputs})
    write(
        "reinforce_policy_gradient",
        "loss = −mean_i log π_W(a_i|s_i) Â_i with π_W(·|s) = softmax(s·W);  "
        "∇_W loss = −mean_i s_i ⊗ (e_{a_i} − π_W(·|s_i)) Â_i",
        "A linear softmax policy: logits = obs @ W, obs [B][d], W [d][A]. Â is a constant (no "
        "gradient flows through the advantages or a baseline). grad_W is [d][A].",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["reinforce.reinforce_loss"],
    )


# ---------------------------------------------------------------- TRPO


def krylov_iterate(A, b, k):
    """The k-th conjugate-gradient iterate, by its defining property rather than by the CG
    recursion: x_k minimises the A-norm of the error over span{b, Ab, …, A^{k−1} b}."""
    K = np.stack([np.linalg.matrix_power(A, j) @ b for j in range(k)], 1)
    Q, _ = np.linalg.qr(K)
    return Q @ np.linalg.solve(Q.T @ A @ Q, Q.T @ b)


def fisher(obs, W, damping):
    """F + damping·I for logits = obs @ W, in the coordinates of W.ravel() (row-major):
    F = mean_s Jᵀ (diag p − p pᵀ) J = mean_s (s sᵀ) ⊗ (diag p − p pᵀ)."""
    obs, p = np.asarray(obs), softmax(np.asarray(obs) @ np.asarray(W))
    per_state = [
        np.kron(np.outer(s, s), np.diag(q) - np.outer(q, q)) for s, q in zip(obs, p, strict=True)
    ]
    F = np.mean(per_state, 0)
    return F + damping * np.eye(len(F))


def mean_kl(obs, W_old, W):
    """mean_s KL(π_old(·|s) ‖ π_W(·|s)) of the linear softmax policy."""
    lp, lq = log_softmax(np.asarray(obs) @ W_old), log_softmax(np.asarray(obs) @ W)
    return float(np.mean((np.exp(lp) * (lp - lq)).sum(-1)))


def trpo_vectors(rng):
    n = 6
    M = rng.normal(size=(n, n))
    A = r(M @ M.T / n + np.eye(n))
    b = r(rng.normal(size=n))
    cases = []
    for iters, tol in [(1, 0.0), (2, 0.0), (3, 0.0), (n, 0.0), (25, 1e-10)]:
        Aa, ba = np.array(A), np.array(b)
        x = np.linalg.solve(Aa, ba) if iters >= n else krylov_iterate(Aa, ba, iters)
        inputs = dict(A=A, b=b, iters=iters, tol=tol)
        cases.append({"inputs": inputs, "outputs": {"x": x.tolist()}})
    write(
        "conjugate_gradient",
        "CG for A x = b from x_0 = 0:  x_k = argmin_{x ∈ span{b, Ab, …, A^{k−1}b}} "
        "(x − x*)ᵀ A (x − x*),  x* = A⁻¹ b",
        "A is symmetric positive definite and is used only through v ↦ A v. iters is the "
        "number of CG iterations (x_k for k = iters); the iteration stops early once "
        "|b − A x_k| ≤ tol·|b|. With iters ≥ n the answer is A⁻¹ b (numpy.linalg.solve); with "
        "fewer, the Krylov minimiser, computed here by projection, not by the CG recursion.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["trpo.conjugate_gradient"],
    )

    cases = []
    for B, d, nA, damping in [(5, 3, 2, 0.0), (5, 3, 2, 0.1), (6, 2, 3, 0.01)]:
        obs, W = r(rng.normal(size=(B, d))), r(rng.normal(size=(d, nA)) * 0.7)
        v = r(rng.normal(size=d * nA))
        F = fisher(obs, W, damping)
        check_fisher_is_kl_hessian(np.array(obs), np.array(W))
        inputs = dict(obs=obs, W=W, damping=damping, v=v)
        cases.append({"inputs": inputs, "outputs": {"Fv": (F @ np.array(v)).tolist()}})
    write(
        "fisher_vector_product",
        "F = ∇²_θ mean_s KL(π_θold(·|s) ‖ π_θ(·|s)) at θ = θold = mean_s Jᵀ(diag p − p pᵀ)J, "
        "J = ∂logits/∂θ;  output (F + damping·I) v",
        "A linear softmax policy: logits = obs @ W, obs [B][d], W [d][A]; θ = W flattened "
        "row-major (index j·A + a), so v and Fv have d·A entries. For this policy "
        "F = mean_s (s sᵀ) ⊗ (diag p − p pᵀ). Damping is included in the product, as TRPO "
        "solves (F + damping·I) s = g. With damping 0 this F is singular (adding a constant "
        "to all logits changes nothing).",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["trpo.fisher_vector_product"],
    )

    # Three situations, each drawn until it occurs: the full step is accepted; the full step
    # breaks the trust region and a halved one is accepted; no candidate is accepted.
    cases = []
    for max_kl, ls_steps, want in [(0.01, 10, (1, 1)), (1.0, 10, (2, 1)), (1.0, 1, (1, 0))]:
        while True:
            obs, W = r(rng.normal(size=(8, 3))), r(rng.normal(size=(3, 2)) * 0.5)
            actions, adv = rng.integers(0, 2, 8), r(rng.normal(size=8))
            inputs = dict(obs=obs, W=W, actions=actions.tolist(), adv=adv, max_kl=max_kl,
                          damping=0.1, ls_steps=ls_steps)  # fmt: skip
            out = trpo_reference(**inputs)
            if out is not None and (out["line_search_steps"], out["accepted"]) == want:
                break
        cases.append({"inputs": inputs, "outputs": out})
    write(
        "trpo_step",
        "g = ∇_θ L(θold), L(θ) = mean_i π_θ(a_i|s_i)/π_θold(a_i|s_i) Â_i;  "
        "s = (F + damping·I)⁻¹ g;  "
        "β = sqrt(2δ / sᵀ(F + damping·I)s);  θ_k = θold + 0.5^k β s, k = 0, 1, …, ls_steps − 1: "
        "accept the first with mean_s KL(π_θold ‖ π_θk) ≤ δ and L(θ_k) − L(θold) > 0",
        "A linear softmax policy, logits = obs @ W, θ = W flattened row-major (see "
        "fisher_vector_product). max_kl is δ. s is the exact solution (CG run to convergence). "
        "line_search_steps counts the candidates tried; if none is accepted, accepted is 0, "
        "W_new = W and kl/improvement are those of the last candidate tried. "
        "expected_improvement is gᵀ(θ_k − θold) of that candidate. s is the natural-gradient "
        "direction, full_step is β s.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["trpo.trpo_step"],
    )

    logits_p, logits_q = r(rng.normal(size=(6, 3)) * 2), r(rng.normal(size=(6, 3)) * 2)
    lp, lq = log_softmax(logits_p), log_softmax(logits_q)
    write(
        "categorical_kl",
        "KL(p ‖ q) = Σ_a p(a) (log p(a) − log q(a)),  p = softmax(logits_p), q = softmax(logits_q)",
        "Per state (one value per row of [B][A] logits), not averaged.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logits_p=logits_p, logits_q=logits_q),
          "outputs": {"kl": (np.exp(lp) * (lp - lq)).sum(-1).tolist()}}],
        ["trpo.categorical_kl"],
    )  # fmt: skip

    logits = r(rng.normal(size=(7, 3)))
    actions = rng.integers(0, 3, 7)
    logp_old = r(log_softmax(np.array(logits))[np.arange(7), actions] + rng.normal(0, 0.2, 7))
    adv = r(rng.normal(size=7))
    ratio = np.exp(log_softmax(np.array(logits))[np.arange(7), actions] - np.array(logp_old))
    write(
        "trpo_surrogate",
        "L(θ) = mean_i π_θ(a_i|s_i) / π_θold(a_i|s_i) Â_i,  π_θ = softmax(logits)",
        "logits [B][A] of π_θ, the taken actions, log π_θold(a_i|s_i) and the advantages.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logits=logits, actions=actions.tolist(), logp_old=logp_old, adv=adv),
          "outputs": {"surrogate": float(np.mean(ratio * np.array(adv)))}}],
        ["trpo.surrogate_advantage"],
    )  # fmt: skip


def check_fisher_is_kl_hessian(obs, W, h=1e-5):
    """Self-check of the closed form: its columns are central differences of ∇ mean KL."""

    def grad_kl(theta):
        # ∇_W mean_s KL(p_old ‖ softmax(s·W)) = mean_s s ⊗ (softmax(s·W) − p_old)
        q = softmax(obs @ theta.reshape(W.shape))
        return np.mean(
            [np.outer(s, a - b) for s, a, b in zip(obs, q, softmax(obs @ W), strict=True)], 0
        )

    theta, F = W.ravel(), fisher(obs, W, 0.0)
    for i in range(len(theta)):
        e = np.eye(len(theta))[i] * h
        column = (grad_kl(theta + e) - grad_kl(theta - e)).ravel() / (2 * h)
        assert np.allclose(column, F[:, i], atol=1e-8), "closed-form Fisher is wrong"


def trpo_reference(obs, W, actions, adv, max_kl, damping, ls_steps):
    obs, W0, adv = np.array(obs), np.array(W), np.array(adv)
    idx = np.arange(len(obs))
    logp_old = log_softmax(obs @ W0)[idx, actions]

    def surrogate(Wk):
        return float(np.mean(np.exp(log_softmax(obs @ Wk)[idx, actions] - logp_old) * adv))

    # ∇_W L at W_old = mean_i Â_i s_i ⊗ (e_{a_i} − π_old(·|s_i)), since the ratio is 1 there
    p0 = softmax(obs @ W0)
    onehot = np.eye(W0.shape[1])[actions]
    terms = zip(adv, obs, onehot, p0, strict=True)
    g = np.mean([ai * np.outer(s, e - q) for ai, s, e, q in terms], 0).ravel()
    Fd = fisher(obs, W0, damping)
    s = np.linalg.solve(Fd, g)
    beta = np.sqrt(2 * max_kl / (s @ Fd @ s))
    out = dict(grad_norm=float(np.linalg.norm(g)), s=s.tolist(), beta=float(beta))
    out["full_step"] = (beta * s).tolist()
    for k in range(ls_steps):
        step = 0.5**k * beta * s
        Wk = W0 + step.reshape(W0.shape)
        kl, improvement = mean_kl(obs, W0, Wk), surrogate(Wk) - surrogate(W0)
        accepted = kl <= max_kl and improvement > 0
        if abs(kl - max_kl) < 1e-3 * max_kl or abs(improvement) < 1e-6:
            return None  # on a knife edge that rounding could flip: not a good test vector
        out.update(line_search_steps=k + 1, accepted=int(accepted), kl=kl)
        out.update(improvement=improvement, expected_improvement=float(g @ step))
        out["W_new"] = (Wk if accepted else W0).tolist()
        if accepted:
            break
    return out


# ---------------------------------------------------------------- reward model


def bradley_terry_vectors(rng):
    rc = r(np.concatenate([rng.normal(size=6), [40.0, -40.0]]))
    rr = r(np.concatenate([rng.normal(size=6), [-5.0, 5.0]]))
    d = np.array(rc) - np.array(rr)
    n = len(d)
    # −log σ(d) = log(1 + e^{−d}) = logaddexp(0, −d); ∂/∂r_c = −σ(−d)/n, ∂/∂r_r = σ(−d)/n
    sigma_neg = np.exp(-np.logaddexp(0, d))
    write(
        "bradley_terry_loss",
        "P(y_c ≻ y_r) = σ(r_c − r_r);  loss = −mean_i log σ(r_c,i − r_r,i)",
        "r_chosen and r_rejected are the scalar rewards of the preferred and the other response "
        "of each pair. The last two pairs have margins ±45: a naive log(sigmoid(·)) gives -inf "
        "there in float32 and loses precision in float64; use a stable log-sigmoid.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(r_chosen=rc, r_rejected=rr),
          "outputs": dict(loss=float(np.mean(np.logaddexp(0, -d))),
                          grad_chosen=(-sigma_neg / n).tolist(),
                          grad_rejected=(sigma_neg / n).tolist())}],
        ["reward_model.bradley_terry_loss", "rlhf_ppo_gpt2.bradley_terry_loss"],
    )  # fmt: skip

    n_embd = 4
    hidden = r(rng.normal(size=(6, n_embd)))
    w, bias = r(rng.normal(size=n_embd)), 0.3
    reference = r(rng.normal(size=5) * 2 + 1)  # raw rewards of reference responses
    mu, sd = float(np.mean(reference)), float(np.std(reference, ddof=1))
    raw = np.array(hidden) @ np.array(w) + bias
    write(
        "reward_normalization",
        "μ, σ = mean and sample std (n − 1) of the raw rewards of reference responses;  "
        "r'(x, y) = (r(x, y) − μ) / σ",
        "The reward model reads r = w·h + b from its last hidden state h; normalising folds "
        "the affine map into the head (w ← w/σ, b ← (b − μ)/σ), so the reference responses "
        "then score mean 0 and std 1 (Ziegler et al. 2019). hidden [B][n_embd] are hidden "
        "states of other responses; normalized_rewards are the new head's outputs on them.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(reference_rewards=reference, head_weight=w, head_bias=bias,
                         hidden=hidden),
          "outputs": dict(mean=mu, std=sd, normalized_rewards=((raw - mu) / sd).tolist())}],
        ["reward_model.RewardModel.normalize_", "rlhf_ppo_gpt2.RewardModel.normalize_"],
    )  # fmt: skip

    rc = [1.0, 0.5, -0.2, 2.0, 0.0, 0.7, -1.0, 0.3]
    rr = [0.0, 0.9, -0.5, 2.5, 0.0, 0.1, -2.0, 0.4]
    gc = [0.8, 0.1, 0.5, 0.5, 0.2, -0.3, 0.9, 0.0]
    gr = [0.1, 0.4, 0.5, 0.9, 0.1, 0.6, -0.5, 0.0]
    right = [int(c > d) for c, d in zip(rc, rr, strict=True)]
    pairs = [(ok, g1 > g2) for ok, g1, g2 in zip(right, gc, gr, strict=True) if g1 != g2]
    write(
        "reward_model_pair_accuracies",
        "label accuracy = mean_i [r_c,i > r_r,i];  gold accuracy = mean over pairs with "
        "g_c ≠ g_r of [(r_c > r_r) = (g_c > g_r)]",
        "A tie of the rewards (r_c = r_r) counts as wrong. Pairs whose gold scores tie carry "
        "no order and are left out of the gold accuracy.",
        {"rtol": 1e-12, "atol": 0},
        [{"inputs": dict(r_chosen=rc, r_rejected=rr, gold_chosen=gc, gold_rejected=gr),
          "outputs": dict(label_accuracy=float(np.mean(right)),
                          gold_accuracy=float(np.mean([a == b for a, b in pairs])))}],
        ["reward_model.pair_accuracies"],
    )  # fmt: skip


# ---------------------------------------------------------------- RLHF (token level)


def prefix_mask(lengths, L):
    return (np.arange(L)[None, :] < np.array(lengths)[:, None]).astype(int)


def rlhf_vectors(rng):
    B, L, lengths = 3, 6, [6, 3, 1]
    mask = prefix_mask(lengths, L)
    cases = []
    for beta in (0.05, 0.0):
        logprobs = r(-rng.exponential(size=(B, L)))
        ref = r(-rng.exponential(size=(B, L)))
        scores = r(rng.normal(size=B))
        rewards = np.zeros((B, L))
        for b in range(B):
            for t in range(lengths[b]):
                rewards[b, t] = -beta * (logprobs[b][t] - ref[b][t])
            rewards[b, lengths[b] - 1] += scores[b]
        inputs = dict(scores=scores, logprobs=logprobs, ref_logprobs=ref, mask=mask.tolist(),
                      beta=beta)  # fmt: skip
        cases.append({"inputs": inputs, "outputs": {"rewards": rewards.tolist()}})
    write(
        "rlhf_kl_shaped_rewards",
        "r_t = −β (log π(y_t|x, y_<t) − log π_ref(y_t|x, y_<t)) "
        "+ [t = last response token] r_φ(x, y)",
        "[B][L] over response tokens. mask is 1 on the response (EOS included) and 0 on the "
        "padding after it: a prefix of ones in each row. The score lands once, on the last "
        "token with mask 1; the KL penalty on every response token; padding gets 0 whatever "
        "its log-probs hold (Ziegler et al. 2019; Huang et al. 2023).",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.kl_shaped_rewards"],
    )

    B, L, lengths = 3, 7, [7, 4, 1]
    mask = prefix_mask(lengths, L)
    cases = []
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8)]:
        rewards = r(rng.normal(size=(B, L)))  # padding holds garbage rewards on purpose
        values = r(rng.normal(size=(B, L)))  # and garbage values
        adv, ret = np.zeros((B, L)), np.zeros((B, L))
        for b in range(B):
            n = lengths[b]
            V = list(values[b][:n]) + [0.0]  # the episode ends at the last real token
            delta = [rewards[b][t] + gamma * V[t + 1] - V[t] for t in range(n)]
            for t in range(n):
                adv[b, t] = sum((gamma * lam) ** (k - t) * delta[k] for k in range(t, n))
                ret[b, t] = adv[b, t] + V[t]
        inputs = dict(rewards=rewards, values=values, mask=mask.tolist(), gamma=gamma, lam=lam)
        cases.append({"inputs": inputs, "outputs": {"advantages": adv.tolist(),
                                                    "returns": ret.tolist()}})  # fmt: skip
    write(
        "rlhf_token_gae",
        "δ_t = r_t + γ V_{t+1} − V_t (V_{T+1} = 0 after the last response token T);  "
        "Â_t = Σ_{k=t}^{T} (γλ)^{k−t} δ_k;  R_t = Â_t + V_t",
        "[B][L] over response tokens; mask is a prefix of ones (response incl. EOS). Each row "
        "is one episode that ends at its last masked token with no bootstrap (also when the "
        "response was cut at the length limit). Advantages and returns are 0 on padding, and "
        "the rewards and values there are ignored.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.token_gae"],
    )

    B, L, lengths, eps = 3, 5, [5, 3, 2], 0.2
    mask = prefix_mask(lengths, L)
    m = mask.astype(bool)
    old = r(-rng.exponential(size=(B, L)))
    ratio = np.array([[0.5, 0.9, 1.1, 1.3, 0.75], [1.0, 1.25, 0.7, 2.0, 3.0],
                      [0.85, 1.05, 0.1, 9.0, 1.0]])  # fmt: skip
    logprobs = r(np.array(old) + np.log(ratio))
    adv = r(rng.normal(size=(B, L)))
    rt = np.exp(np.array(logprobs) - np.array(old))
    a, M = np.array(adv), m.sum()
    surrogate = np.minimum(rt * a, np.clip(rt, 1 - eps, 1 + eps) * a)
    active = np.where(a >= 0, rt <= 1 + eps, rt >= 1 - eps)
    log_r = np.log(rt)
    policy = dict(
        loss=float(-surrogate[m].mean()),
        grad_logprobs=np.where(m & active, -rt * a / M, 0.0).tolist(),
        clipfrac=float((np.abs(rt - 1) > eps)[m].mean()),
        approx_kl=float((rt - 1 - log_r)[m].mean()),
    )
    v_old, ret = r(rng.normal(size=(B, L))), r(rng.normal(size=(B, L)))
    v = r(np.array(v_old) + rng.uniform(-0.5, 0.5, size=(B, L)))
    value_cases = []
    for clip in (0.2, 0.0):
        va, vo, tg = np.array(v), np.array(v_old), np.array(ret)
        unclipped = (va - tg) ** 2
        vc = vo + np.clip(va - vo, -clip, clip)
        if clip > 0:
            both = np.maximum(unclipped, (vc - tg) ** 2)
            g = np.where(unclipped >= (vc - tg) ** 2, va - tg,
                         np.where(np.abs(va - vo) < clip, vc - tg, 0.0))  # fmt: skip
        else:
            both, g = unclipped, va - tg
        value_cases.append(dict(clip_coef=clip, loss=0.5 * float(both[m].mean()),
                                grad_values=np.where(m, g / M, 0.0).tolist()))  # fmt: skip
    write(
        "rlhf_token_ppo_losses",
        "ρ_t = exp(log π − log π_old);  policy loss = −masked_mean min(ρ_t Â_t, clip(ρ_t, 1−ε, "
        "1+ε) Â_t);  clipfrac = masked_mean [|ρ_t − 1| > ε];  approx_kl = masked_mean((ρ_t − 1) − "
        "log ρ_t);  value loss = ½ masked_mean max((V − R)², "
        "(V_old + clip(V − V_old, −c, c) − R)²)",
        "[B][L] over response tokens; masked_mean(x) = Σ x·m / Σ m over all tokens of the batch "
        "(every token weighs the same, not every sequence). Padding (m = 0) holds garbage and "
        "gets zero gradient. c = 0 turns the value clip off. grad_* are ∂loss/∂input.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logprobs=logprobs, old_logprobs=old, advantages=adv, mask=mask.tolist(),
                         clip_coef=eps, values=v, old_values=v_old, returns=ret),
          "outputs": dict(policy=policy, value=value_cases)}],
        ["rlhf_ppo_gpt2.token_policy_loss", "rlhf_ppo_gpt2.token_value_loss"],
    )  # fmt: skip

    cases = []
    for kl_target, horizon, n_steps in [(6.0, 10000, 512), (0.5, 100, 64), (0.0, 10000, 512)]:
        kls = [0.0, 3.0, 5.5, 6.0, 6.6, 7.2, 12.0, 30.0, 0.1, 4.0]
        kls = [k * kl_target / 6 for k in kls] if kl_target else kls
        beta, betas = 0.05, []
        for kl in kls:
            if kl_target > 0:
                e = np.clip(kl / kl_target - 1, -0.2, 0.2)
                beta = beta * (1 + e * n_steps / horizon)
            betas.append(float(beta))
        inputs = dict(beta0=0.05, kl_target=kl_target, horizon=horizon, n_steps=n_steps, kls=kls)
        cases.append({"inputs": inputs, "outputs": {"betas": betas}})
    write(
        "rlhf_adaptive_kl_controller",
        "e = clip(KL / KL_target − 1, −0.2, 0.2);  β ← β (1 + e · n_steps / horizon)",
        "Ziegler et al. 2019, section 2.2. Starting from beta0, betas[i] is β after the update "
        "whose measured KL is kls[i]; n_steps is the number of samples (episodes) in that "
        "update. kl_target = 0 keeps β fixed.",
        {"rtol": 1e-12, "atol": 0},
        cases,
        ["rlhf_ppo_gpt2.adaptive_kl_coef"],
    )

    cases = []
    for temperature in (1.0, 0.7):
        logits = r(rng.normal(size=(2, 3, 5)) * 2)
        tokens = rng.integers(0, 5, (2, 3))
        lp = log_softmax(np.array(logits) / temperature)
        logprobs = np.take_along_axis(lp, tokens[..., None], -1)[..., 0]
        entropy = -(np.exp(lp) * lp).sum(-1)
        inputs = dict(logits=logits, tokens=tokens.tolist(), temperature=temperature)
        outputs = dict(logprobs=logprobs.tolist(), entropy=entropy.tolist())
        cases.append({"inputs": inputs, "outputs": outputs})
    write(
        "rlhf_token_logprobs",
        "log π(y_t) = log_softmax(z_t / T)[y_t];  H_t = −Σ_a p_a log p_a,  p = softmax(z_t / T)",
        "logits [B][L][V] are the logits that predicted tokens [B][L]; T is the sampling "
        "temperature, which scoring must use too, or the PPO ratio is not 1 before any update.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.token_logprobs", "rlhf_ppo_gpt2.token_entropy"],
    )

    x = r(rng.normal(size=(3, 5)) * 2 + 1)
    mask = prefix_mask([5, 2, 3], 5)
    vals = np.array(x)[mask.astype(bool)]
    white = (np.array(x) - vals.mean()) / np.sqrt(vals.var(ddof=1) + 1e-8) * mask
    write(
        "rlhf_masked_whiten",
        "x̂ = (x − μ) / sqrt(σ² + 1e-8) · m,  μ, σ² = mean and sample variance (n − 1) of the "
        "entries with m = 1",
        "[B][L]; statistics over all masked-in entries of the batch; masked entries come out 0.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(x=x, mask=mask.tolist()), "outputs": {"whitened": white.tolist()}}],
        ["rlhf_ppo_gpt2.masked_whiten"],
    )

    logits = r(rng.normal(size=(2, 5, 4)))
    labels = rng.integers(0, 4, (2, 5))
    loss_mask = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]])
    labels = np.where(loss_mask == 1, labels, -100)
    lp = log_softmax(np.array(logits))
    terms = [lp[b, t - 1, labels[b, t]] for b in range(2) for t in range(1, 5) if loss_mask[b, t]]
    write(
        "rlhf_sft_loss",
        "L_SFT = −(1/|R|) Σ_{(b,t) ∈ R} log softmax(z_{b,t−1})[x_{b,t}],  R = {(b,t): m_{b,t} = 1}",
        "logits [B][L][V], labels and loss_mask [B][L]: the logits at position t − 1 predict "
        "the label at t (next-token prediction), averaged over all masked-in tokens of the "
        "batch. Labels outside the mask are ignored (here −100, Hugging Face's ignore index).",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logits=logits, labels=labels.tolist(), loss_mask=loss_mask.tolist()),
          "outputs": {"loss": -float(np.mean(terms))}}],
        ["rlhf_ppo_gpt2.sft_loss"],
    )  # fmt: skip

    attention = [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]]
    positions = [[max(sum(row[: t + 1]) - 1, 0) for t in range(5)] for row in attention]
    eos = 9
    responses = [[3, 4, 9, 9, 9], [5, 9, 2, 9, 1], [1, 2, 3, 4, 5], [9, 9, 9, 9, 9]]
    rmask = []
    for row in responses:
        first = row.index(eos) if eos in row else len(row) - 1
        rmask.append([int(t <= first) for t in range(len(row))])
    write(
        "rlhf_masks",
        "position_t = (Σ_{s≤t} m_s) − 1 (0 on padding);  response mask m_t = 1 up to and "
        "including the first EOS, 0 after it",
        "Left-padded prompts: the first real token gets position 0, as in pre-training. "
        "Responses: generation pads with EOS itself, so padding is found by position, not id; "
        "a response without EOS (cut at the length limit) is all ones.",
        {"rtol": 0, "atol": 0},
        [{"inputs": dict(attention_mask=attention, responses=responses, eos_id=eos),
          "outputs": dict(positions=positions, response_mask=rmask)}],
        ["rlhf_ppo_gpt2.positions_from_mask", "rlhf_ppo_gpt2.response_mask_after_eos"],
    )  # fmt: skip


# ---------------------------------------------------------------- A2C (a2c.py)


def naive_n_step_advantage(rewards, values, terminated, truncated, gamma):
    """The A2C paper's n-step advantage by explicit sums: from t to the end k of t's episode
    or of the rollout, Â_t = Σ_{j=t..k} γ^{j−t} r_j + γ^{k+1−t} V(s_{k+1}) [k not terminal]
    − V(s_t)."""
    rewards, values = np.asarray(rewards), np.asarray(values)
    done = np.logical_or(terminated, truncated)
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for n in range(N):
        for t in range(T):
            k = t
            while not (done[k, n] or k == T - 1):
                k += 1
            ret = sum(gamma ** (j - t) * rewards[j, n] for j in range(t, k + 1))
            if not terminated[k][n]:
                ret += gamma ** (k + 1 - t) * values[k + 1, n]
            adv[t, n] = ret - values[t, n]
    return adv


def a2c_vectors(rng):
    cases = []
    for T, N, gamma in [(5, 2, 0.99), (10, 3, 0.9)]:
        rewards, values = r(rng.normal(size=(T, N))), r(rng.normal(size=(T + 1, N)))
        terminated = (rng.random((T, N)) < 0.15).astype(int)
        truncated = ((rng.random((T, N)) < 0.2) | (rng.random((T, N)) < 0.1)).astype(int)
        adv = naive_n_step_advantage(rewards, values, terminated, truncated, gamma)
        inputs = dict(rewards=rewards, values=values, terminated=terminated.tolist(),
                      truncated=truncated.tolist(), gamma=gamma)  # fmt: skip
        outputs = dict(advantages=adv.tolist(), returns=(adv + np.array(values)[:-1]).tolist())
        cases.append({"inputs": inputs, "outputs": outputs})
    write(
        "a2c_n_step_return",
        "V^targ_t = Σ_{j=t..k} γ^{j−t} r_j + γ^{k+1−t} V(s_{k+1}) [k not terminal];  "
        "Â_t = V^targ_t − V(s_t),  k = the last step of t's episode within the rollout",
        "GAE with λ = 1 (a2c.gae, gae_lambda=1). Arrays are time-major [T][N]; values has "
        "T+1 rows. A step may be terminated and truncated at once: then it is terminal and "
        "gets no bootstrap. A return cut by the rollout's end bootstraps with values[T].",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["a2c.gae"],
    )

    n, A, c1, c2 = 7, 3, 0.5, 0.01
    logits = r(rng.normal(size=(n, A)) * 1.5)
    actions = rng.integers(0, A, n).tolist()
    values, adv, ret = (r(rng.normal(size=n)) for _ in range(3))
    logpi = log_softmax(np.array(logits))
    p = np.exp(logpi)
    H = -(p * logpi).sum(-1)
    a, v, g = np.array(adv), np.array(values), np.array(ret)
    logp_a = logpi[np.arange(n), actions]
    pg = -np.mean(logp_a * a)
    vf = 0.5 * np.mean((v - g) ** 2)
    # ∂/∂z_ij: policy term −Â_i (1[j = a_i] − p_ij)/n; entropy term c2 p_ij (log p_ij + H_i)/n
    grad_logits = -a[:, None] * (np.eye(A)[actions] - p) / n + c2 * p * (logpi + H[:, None]) / n
    write(
        "a2c_loss",
        "L = −mean_t log π(a_t|s_t) Â_t + c1 · ½ mean_t (V(s_t) − V^targ_t)² − c2 · "
        "mean_t S[π(·|s_t)],  π = softmax(logits)",
        "Â and V^targ are constants (no gradient). grad_logits is ∂L/∂logits, [batch][actions]; "
        "grad_values is ∂L/∂V = c1 (V − V^targ)/n.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(logits=logits, actions=actions, values=values, advantages=adv,
                         returns=ret, vf_coef=c1, ent_coef=c2),
          "outputs": dict(loss=pg + c1 * vf - c2 * H.mean(), pg_loss=pg, v_loss=vf,
                          entropy=H.mean(), grad_logits=grad_logits.tolist(),
                          grad_values=(c1 * (v - g) / n).tolist())}],
        ["a2c.a2c_loss"],
    )  # fmt: skip

    theta = r(rng.normal(size=4))
    grads = [r(rng.normal(size=4) * s) for s in (1.0, 0.1, 1e-4)]
    lr, alpha, eps = 7e-4, 0.99, 1e-5
    th, sq, thetas = np.array(theta), np.zeros(4), []
    for grad in map(np.array, grads):
        sq = alpha * sq + (1 - alpha) * grad**2
        th = th - lr * grad / (np.sqrt(sq) + eps)
        thetas.append(th.tolist())
    write(
        "a2c_rmsprop",
        "v ← α v + (1 − α) g²;  θ ← θ − lr g / (√v + ε),  v₀ = 0",
        "The A2C paper's and SB3's optimizer settings (α = 0.99, ε = 1e-5, no momentum, no "
        "centring), the ε outside the square root as in PyTorch. thetas[i] is θ after the "
        "(i+1)-th gradient in grads.",
        {"rtol": 1e-9, "atol": 1e-12},
        [{"inputs": dict(theta=theta, grads=grads, learning_rate=lr, alpha=alpha, eps=eps),
          "outputs": {"thetas": thetas}}],
        ["a2c.make_optimizer"],
    )  # fmt: skip


# ---------------------------------------------------------------- continuous control
# (ppo_continuous.py: diagonal Gaussian policies)


def gaussian_vectors(rng):
    """Diagonal Gaussians N(μ, diag σ²) in closed form, one action dimension at a time."""
    cases = []
    for B, D in [(1, 1), (5, 3), (4, 6)]:
        mean, log_std = r(rng.normal(size=(B, D))), r(rng.normal(scale=0.7, size=(B, D)))
        action = r(np.array(mean) + np.exp(log_std) * rng.normal(scale=1.5, size=(B, D)))
        logp = np.zeros(B)
        for b in range(B):
            for i in range(D):
                mu, ls, a = mean[b][i], log_std[b][i], action[b][i]
                sigma = np.exp(ls)
                logp[b] += -((a - mu) ** 2) / (2 * sigma**2) - ls - 0.5 * np.log(2 * np.pi)
        cases.append({"inputs": dict(action=action, mean=mean, log_std=log_std),
                      "outputs": {"log_prob": logp.tolist()}})  # fmt: skip
    write(
        "gaussian_log_prob",
        "log π(a|s) = −Σ_i [(a_i − μ_i)² / (2 σ_i²) + log σ_i + ½ log 2π]",
        "All arrays [batch][action dims]; the log-density is summed over the action dims, one "
        "value per row. log σ is given (σ = exp(log σ)).",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["ppo_continuous.gaussian_log_prob", "trpo_continuous.gaussian_log_prob"],
    )

    log_std = r(rng.normal(size=(4, 3)))
    ent = [sum(ls + 0.5 * np.log(2 * np.pi * np.e) for ls in row) for row in log_std]
    write(
        "gaussian_entropy",
        "H = Σ_i [log σ_i + ½ log(2πe)]",
        "log σ is [batch][action dims]; one entropy per row (it does not depend on μ).",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": {"log_std": log_std}, "outputs": {"entropy": ent}}],
        ["ppo_continuous.gaussian_entropy"],
    )

    cases = []
    for B, D in [(3, 1), (5, 4)]:
        mp, mq = r(rng.normal(size=(B, D))), r(rng.normal(size=(B, D)))
        lp, lq = r(rng.normal(scale=0.5, size=(B, D))), r(rng.normal(scale=0.5, size=(B, D)))
        kl = np.zeros(B)
        for b in range(B):
            for i in range(D):
                sp, sq = np.exp(lp[b][i]), np.exp(lq[b][i])
                kl[b] += np.log(sq / sp) + (sp**2 + (mp[b][i] - mq[b][i]) ** 2) / (2 * sq**2) - 0.5
        cases.append({"inputs": dict(mean_p=mp, log_std_p=lp, mean_q=mq, log_std_q=lq),
                      "outputs": {"kl": kl.tolist()}})  # fmt: skip
    write(
        "gaussian_kl",
        "KL(p ‖ q) = Σ_i [log σ_q,i − log σ_p,i + (σ_p,i² + (μ_p,i − μ_q,i)²) / (2 σ_q,i²) − ½]",
        "Per row of [batch][action dims] inputs (one KL per state), summed over the action "
        "dims, not averaged. p is the first argument.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["trpo_continuous.gaussian_kl"],
    )


def rlhf_critic_free_vectors(rng):
    """RLOO, GRPO and Dr. GRPO advantages, the three KL estimators and GRPO's loss."""
    cases = []
    for k, n_groups in [(4, 3), (2, 3), (3, 2)]:
        rewards = rng.normal(size=(n_groups, k))
        rewards[1] = 0.25  # a group of equal rewards: no signal, and GRPO's std is 0
        rewards = np.array(r(rewards))
        rloo, grpo, dr = (np.zeros_like(rewards) for _ in range(3))
        for g in range(n_groups):
            group = list(rewards[g])
            mean = sum(group) / k
            std = (sum((x - mean) ** 2 for x in group) / (k - 1)) ** 0.5
            for i in range(k):
                rloo[g, i] = group[i] - sum(group[:i] + group[i + 1 :]) / (k - 1)
                dr[g, i] = group[i] - mean
                grpo[g, i] = 0.0 if std == 0 else (group[i] - mean) / (std + 1e-4)
        cases.append({"inputs": dict(rewards=rewards.ravel().tolist(), k=k, eps=1e-4),
                      "outputs": dict(rloo=rloo.ravel().tolist(), grpo=grpo.ravel().tolist(),
                                      dr_grpo=dr.ravel().tolist())})  # fmt: skip
    write(
        "rlhf_group_advantages",
        "RLOO: Â_i = R_i − (1/(k−1)) Σ_{j≠i} R_j;  GRPO: Â_i = (r_i − mean(r)) / (std(r) + ε);  "
        "Dr. GRPO: Â_i = r_i − mean(r)",
        "rewards is flat, grouped k consecutive per prompt (rows of a [n][k] array); mean and "
        "std are over each group, std the sample std (k − 1 in the denominator). A group of "
        "equal rewards gets Â = 0 exactly (not NaN). For RLOO, R already holds the KL penalty "
        "(R = r_φ − β Σ_t KL_t); GRPO and Dr. GRPO use the reward alone. Each response's Â "
        "applies to every one of its tokens.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.rloo_advantages", "rlhf_ppo_gpt2.group_advantages"],
    )

    cases = []
    for n in (3, 5):
        logp = np.log(rng.dirichlet(np.ones(n)))
        ref = np.log(rng.dirichlet(np.ones(n)))
        # not rounded: full float64 (repr round-trips), so each categorical sums to 1
        p, q = np.exp(logp), np.exp(ref)
        log_r = ref - logp
        k1, k2, k3 = -log_r, 0.5 * log_r**2, (np.exp(log_r) - 1) - log_r
        cases.append({
            "inputs": dict(logprobs=logp.tolist(), ref_logprobs=ref.tolist()),
            "outputs": dict(k1=k1.tolist(), k2=k2.tolist(), k3=k3.tolist(),
                            kl=float(np.sum(p * (logp - ref))),
                            reverse_kl=float(np.sum(q * (ref - logp))),
                            expected_k2=float(np.sum(p * k2))),
        })  # fmt: skip
    write(
        "rlhf_kl_estimators",
        "log r = log π_ref(a) − log π(a);  k1 = −log r;  k2 = ½ (log r)²;  k3 = (r − 1) − log r",
        "Per sampled token a ~ π. Each case enumerates a whole categorical (logprobs and "
        "ref_logprobs are normalised over its n outcomes) so the expectations can be checked: "
        "Σ_a π(a) k1(a) = Σ_a π(a) k3(a) = kl = KL(π‖π_ref) (unbiased); Σ_a π(a) k2(a) = "
        "expected_k2 ≠ kl (biased). reverse_kl = KL(π_ref‖π): the expected gradient of k3 used "
        "as a loss term (samples fixed) is ∇reverse_kl, not ∇kl; that of k2 is ∇kl.",
        {"rtol": 1e-9, "atol": 1e-12},
        cases,
        ["rlhf_ppo_gpt2.kl_estimators"],
    )

    B, L, lengths, eps, beta = 3, 5, [5, 2, 3], 0.2, 0.1
    mask = prefix_mask(lengths, L)
    m = mask.astype(bool)
    old = np.array(r(-rng.exponential(size=(B, L))))
    ratio = np.array([[0.5, 0.9, 1.1, 1.3, 0.75], [1.0, 1.25, 7.0, 2.0, 3.0],
                      [0.85, 1.05, 0.1, 9.0, 1.0]])  # fmt: skip
    logp = np.array(r(old + np.log(ratio)))
    ref = np.array(r(-rng.exponential(size=(B, L))))
    adv = np.repeat(np.array(r(rng.normal(size=B)))[:, None], L, 1) * mask
    rt = np.exp(logp - old)
    surrogate = -np.minimum(rt * adv, np.clip(rt, 1 - eps, 1 + eps) * adv)
    active = np.where(adv >= 0, rt <= 1 + eps, rt >= 1 - eps)
    log_r = ref - logp
    token = surrogate + beta * ((np.exp(log_r) - 1) - log_r)
    # ∂ℓ_t/∂log π_t = −ρ_t Â_t [unclipped] + β (1 − π_ref/π)
    d_token = np.where(active, -rt * adv, 0.0) + beta * (1 - np.exp(log_r))
    cases = []
    for constant in (0, B * L):
        if constant:
            weights = np.full((B, L), 1 / constant)
        else:
            weights = np.repeat((1 / (B * np.array(lengths, float)))[:, None], L, 1)
        cases.append(
            {
                "inputs": dict(constant=constant),
                "outputs": dict(
                    loss=float((token * weights)[m].sum()),
                    grad_logprobs=np.where(m, d_token * weights, 0).tolist(),
                ),
            }
        )
    for c in cases:
        c["inputs"] = dict(
            logprobs=logp.tolist(),
            old_logprobs=old.tolist(),
            ref_logprobs=ref.tolist(),
            advantages=adv.tolist(),
            mask=mask.tolist(),
            clip_coef=eps,
            beta=beta,
            **c["inputs"],
        )
    write(
        "rlhf_grpo_loss",
        "ℓ_t = −min(ρ_t Â_t, clip(ρ_t, 1−ε, 1+ε) Â_t) + β k3_t, ρ_t = exp(log π − log π_old), "
        "k3_t = (π_ref/π − 1) − log(π_ref/π);  GRPO (constant = 0): L = mean_i (1/|y_i|) Σ_t "
        "ℓ_{i,t};  Dr. GRPO (constant > 0): L = Σ_i Σ_t ℓ_{i,t} / constant",
        "[B][L] over response tokens; mask is a prefix of ones (|y_i| = Σ_t mask). The "
        "advantage of a response is the same on each of its tokens. grad_logprobs = ∂L/∂log π "
        "(0 on padding): at ratio 1 the surrogate part is −w Â, the REINFORCE gradient.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.grpo_policy_loss"],
    )  # fmt: skip


# ---------------------------------------------------------------- pitfalls (issue 32)
# Four groups added for the classes of bugs that the field has hit: the importance ratio under
# top-k/top-p sampling, the loss aggregations, gradient accumulation with padding, and a saved
# observation normaliser. Each draws from its own stream (seeds 21-24).


def sampling_support(z, temperature, top_k, top_p):
    """Which tokens the sampler may draw, in the order Hugging Face generate() and vLLM apply
    the processors: z / T, then the top k, then the smallest set of the most probable
    remaining tokens whose (renormalised) probability reaches p. Returns (keep, margin): margin
    is how far the top-p cumulative sum at the cut lies from p, so knife edges can be redrawn."""
    z = np.asarray(z, dtype=np.float64) / temperature
    keep = np.ones(len(z), bool)
    if top_k > 0:
        keep[:] = False
        keep[np.argsort(-z)[:top_k]] = True
    margin = np.inf
    if top_p < 1:
        p = softmax(np.where(keep, z, -np.inf))
        order = [a for a in np.argsort(-p) if keep[a]]
        keep[:] = False
        total = 0.0
        for a in order:
            keep[a] = True
            before, total = total, total + p[a]
            if total >= top_p:
                margin = min(total - top_p, top_p - before)
                break
    return keep, margin


def truncated_sampling_vectors(rng):
    cases = []
    for temperature, top_k, top_p in [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 3, 1.0),
                                      (0.8, 0, 0.85), (0.7, 4, 0.9)]:  # fmt: skip
        B, L, V = 2, 3, 8
        while True:
            logits = np.array(r(rng.normal(size=(B, L, V)) * 2))
            kept = [[sampling_support(z, temperature, top_k, top_p) for z in row] for row in logits]
            if min(m for row in kept for _, m in row) > 1e-3:  # no cut within 1e-3 of p
                break
        keep = np.array([[k for k, _ in row] for row in kept])
        tempered = log_softmax(logits / temperature)
        # log π_sampling(a) = log softmax over the kept tokens of z / T (0 probability elsewhere)
        sampling = log_softmax(np.where(keep, logits / temperature, -np.inf))
        tokens = np.array([[rng.choice(V, p=np.exp(sampling[b, t])) for t in range(L)]
                           for b in range(B)])  # fmt: skip
        lp_sampling = np.take_along_axis(sampling, tokens[..., None], -1)[..., 0]
        lp_full = np.take_along_axis(tempered, tokens[..., None], -1)[..., 0]
        cases.append({
            "inputs": dict(logits=logits.tolist(), tokens=tokens.tolist(),
                           temperature=temperature, top_k=top_k, top_p=top_p),
            "outputs": dict(kept=keep.astype(int).tolist(), logprobs_sampling=lp_sampling.tolist(),
                            logprobs_full=lp_full.tolist(),
                            ratio_full_over_sampling=np.exp(lp_full - lp_sampling).tolist(),
                            ratio_replayed=np.ones((B, L)).tolist()),
        })  # fmt: skip
    write(
        "rlhf_truncated_sampling_logprobs",
        "z' = z / T;  S = top_k(z') ∩ top_p(softmax over top_k(z'));  "
        "log π_samp(a) = z'_a − log Σ_{b∈S} exp z'_b (a ∈ S);  log π_full(a) = log_softmax(z')_a;  "
        "ratio = π_train(a) / π_samp(a)",
        "logits [B][L][V] are those that predicted tokens [B][L]; each token was drawn from the "
        "truncated, tempered distribution. The processors run in generate()'s and vLLM's "
        "order: temperature, then top-k (top_k = 0: off), then top-p (top_p = 1: off) on the "
        "renormalised top-k distribution, keeping the smallest set of most probable tokens "
        "whose probability reaches p (no case has a cut within 1e-3 of p, nor ties). kept is "
        "the support S per position. A trainer that replays the same T, k and p gets "
        "logprobs_sampling and ratio_replayed = 1 before any update; one that scores the full "
        "vocabulary at T gets logprobs_full, and its ratio to the sampler's log-probs is "
        "ratio_full_over_sampling = π_full(S) ≤ 1, the kept mass (TRL #6789). Scoring at T = 1 "
        "after sampling at T ≠ 1 matches neither (TRL #4159).",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.token_logprobs"],
    )


AGGREGATIONS = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)


def aggregation_weights(mode, mask, constant):
    """w_{i,t} with L = Σ_{i,t} w_{i,t} ℓ_{i,t}, written out per mode (0 on padding)."""
    mask = np.asarray(mask, dtype=np.float64)
    B = len(mask)
    lengths = mask.sum(1, keepdims=True)
    return {
        "token-mean": mask / mask.sum(),
        "seq-mean-token-mean": mask / (B * lengths),
        "seq-mean-token-sum": mask / B,
        "seq-mean-token-sum-norm": mask / constant,
    }[mode]


def loss_aggregation_vectors(rng):
    cases = []
    for lengths, L in [([6, 2, 4, 1], 6), ([3, 5, 5, 2, 1], 5)]:
        B = len(lengths)
        mask = prefix_mask(lengths, L)
        loss = np.array(r(rng.normal(size=(B, L))))  # padding holds garbage on purpose
        constant = B * L
        out = {}
        for mode in AGGREGATIONS:
            w = aggregation_weights(mode, mask, constant)
            out[mode] = dict(loss=float((w * loss).sum()), grad_per_token_loss=w.tolist())
        cases.append({"inputs": dict(per_token_loss=loss.tolist(), mask=mask.tolist(),
                                     constant=constant), "outputs": out})  # fmt: skip
    write(
        "rlhf_loss_aggregation",
        "token-mean: L = Σ_{i,t} m ℓ / Σ_{i,t} m;  seq-mean-token-mean (GRPO): L = (1/B) Σ_i "
        "(1/|y_i|) Σ_t m ℓ;  seq-mean-token-sum: L = (1/B) Σ_i Σ_t m ℓ;  seq-mean-token-sum-norm "
        "(Dr. GRPO): L = Σ_i Σ_t m ℓ / C",
        "per_token_loss ℓ and mask m are [B][L] (m a prefix of ones, |y_i| = Σ_t m_{i,t}); "
        "padding holds garbage that must not count. C = constant = B × the longest possible "
        "response (Dr. GRPO's 'MAX_TOKENS' per response times the B responses). "
        "grad_per_token_loss = ∂L/∂ℓ: the weight each token gets (0 on padding). Under "
        "seq-mean-token-mean a token of a short response weighs more than one of a long "
        "response (the length bias of Liu et al. 2025 and TRL #2995); under token-mean and "
        "the constant every token weighs the same. Names: TRL's loss_type bnpo/dapo = "
        "token-mean, grpo = seq-mean-token-mean, luspo = seq-mean-token-sum, dr_grpo = "
        "seq-mean-token-sum-norm; verl's loss_agg_mode uses these names.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.masked_mean", "rlhf_ppo_gpt2.grpo_policy_loss"],
    )


def grad_accumulation_vectors(rng):
    modes = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")
    cases = []
    for lengths, L, micro in [([5, 1, 4, 3], 5, [[0, 1], [2, 3]]),
                              ([2, 6, 1, 5, 3, 6], 6, [[0, 1, 2, 3], [4, 5]])]:  # fmt: skip
        B, G = len(lengths), len(micro)
        mask = prefix_mask(lengths, L)
        loss = np.array(r(rng.normal(size=(B, L))))
        out = {}
        for mode in modes:
            w = aggregation_weights(mode, mask, B * L)
            # the large batch's weights restricted to a micro-batch's rows: Σ_k L_k = L exactly
            micro_losses = [float((w[rows] * loss[rows]).sum()) for rows in micro]
            # each micro-batch normalised on its own, then divided by G (a trainer that scales
            # each micro-batch's loss by 1/G and sums the gradients)
            naive_w = np.zeros((B, L))
            for rows in micro:
                naive_w[rows] = aggregation_weights(mode, mask[rows], len(rows) * L) / G
            out[mode] = dict(loss=float((w * loss).sum()), grad_per_token_loss=w.tolist(),
                             micro_losses=micro_losses,
                             naive_loss=float((naive_w * loss).sum()),
                             naive_grad_per_token_loss=naive_w.tolist())  # fmt: skip
        inputs = dict(per_token_loss=loss.tolist(), mask=mask.tolist(), micro_batches=micro,
                      max_length=L)  # fmt: skip
        cases.append({"inputs": inputs, "outputs": out})
    write(
        "rlhf_grad_accumulation",
        "Σ_k ∇L_k = ∇L for micro-batches k that partition the batch, with L_k = Σ_{(i,t) ∈ k} "
        "w_{i,t} ℓ_{i,t} and w the large batch's weights (see rlhf_loss_aggregation); naive: "
        "(1/G) Σ_k L_agg(micro-batch k alone)",
        "per_token_loss and mask [B][L]; micro_batches lists the rows of each of the G "
        "micro-batches. For each aggregation, loss and grad_per_token_loss are those of one "
        "large batch; micro_losses are the correctly scaled micro-batch losses, whose sum and "
        "summed gradients are exactly those of the large batch: a token mean needs the token "
        "count of the whole batch in every micro-batch's denominator (Σ m of the batch, not of "
        "the micro-batch). naive_* is what dividing each micro-batch's own aggregate by G "
        "gives: it equals the large batch for seq-mean-token-mean and the Dr. GRPO constant "
        "(C = rows × max_length) only when the micro-batches hold equal numbers of responses "
        "(case 0), and for the token mean only when they hold equal numbers of tokens (never "
        "here). TRL #2617, #3021; the Hugging Face Trainer's num_items_in_batch fix.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        [
            "rlhf_ppo_gpt2.masked_mean",
            "rlhf_ppo_gpt2.token_share",
            "rlhf_ppo_gpt2.grpo_policy_loss",
        ],
    )


def obs_normalizer_vectors(rng):
    D, clip = 3, 10.0
    loc, scale = np.array([5.0, -2.0, 0.1]), np.array([10.0, 0.5, 0.01])
    stream = [r(loc + scale * rng.normal(size=(n, D))) for n in (4, 1, 6, 3)]
    every = np.concatenate([np.array(b) for b in stream])
    mean, var = every.mean(0), every.var(0)  # population variance of all samples so far
    eval_obs = np.array(r(loc + scale * rng.normal(size=(5, D))))
    eval_obs[4] = [500.0, -2.0, 0.1]  # far out: its first feature hits the clip
    W = np.array(r(rng.normal(size=(D, 2))))
    normalized = np.clip((eval_obs - mean) / np.sqrt(var + 1e-8), -clip, clip)
    fresh = np.clip(eval_obs / np.sqrt(1 + 1e-8), -clip, clip)  # μ = 0, σ² = 1: stats not saved
    write(
        "obs_normalizer_checkpoint",
        "μ, σ² = mean and population variance of every training observation;  "
        "õ = clip((o − μ) / sqrt(σ² + 1e-8), −c, c);  a = õ W",
        "stream is the list of observation batches [n_k][D] seen in training, in order; the "
        "running statistics must equal the moments of all of them (any batching; count = Σ "
        "n_k). After the statistics are saved with the agent and loaded into a fresh process, "
        "the frozen statistics normalise eval_obs [M][D] (they are not updated at evaluation) "
        "and the policy, here linear (a = õ W), gives actions, identical to the training "
        "process's. actions_fresh_stats is what a loader that drops the statistics gets "
        "(μ = 0, σ² = 1; CleanRL #425, #532). Libraries whose running statistics start with a "
        "small prior count (SB3's VecNormalize, Gymnasium's NormalizeObservation: count 1e-4 "
        "with μ = 0, σ² = 1) differ from μ, σ² by about 1e-4 / count.",
        {"rtol": 1e-6, "atol": 1e-9},
        [{"inputs": dict(stream=stream, clip=clip, eval_obs=eval_obs.tolist(), W=W.tolist()),
          "outputs": dict(mean=mean.tolist(), var=var.tolist(), count=len(every),
                          normalized_eval_obs=normalized.tolist(),
                          actions=(normalized @ W).tolist(),
                          actions_fresh_stats=(fresh @ W).tolist())}],
        ["ppo_continuous.update_moments", "ppo_continuous.normalize_obs",
         "ppo_continuous.Normalizer", "trpo_continuous.Normalizer"],
    )  # fmt: skip


# ---------------------------------------------------------------- DPO and REINFORCE++ (issue 34)


def dpo_vectors(rng):
    cases = []
    for n, beta in [(4, 0.1), (3, 2.0)]:
        pc, pr, rc, rr = (np.array(r(-rng.exponential(size=n) * 15)) for _ in range(4))
        pr[0] = pc[0] - rc[0] + rr[0]  # pair 0: z = 0 exactly (π = π_ref on it)
        loss, margin, g_c, g_r = 0.0, 0.0, [], []
        for i in range(n):  # one pair at a time
            z = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
            loss += np.log1p(np.exp(-z)) / n  # −log σ(z)
            margin += z / n
            d = -beta * (1 - 1 / (1 + np.exp(-z))) / n  # ∂L/∂log π(y_w|x) = −β σ(−z) / n
            g_c.append(d)
            g_r.append(-d)
        cases.append({"inputs": dict(logp_chosen=pc.tolist(), logp_rejected=pr.tolist(),
                                     ref_chosen=rc.tolist(), ref_rejected=rr.tolist(), beta=beta),
                      "outputs": dict(loss=float(loss), margin=float(margin),
                                      grad_logp_chosen=g_c, grad_logp_rejected=g_r)})  # fmt: skip
    write(
        "rlhf_dpo_loss",
        "z = β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))];  "
        "L = −mean log σ(z);  margin = mean z",
        "Per pair, log π(y|x) is the sum of the response's token log-probs, EOS included, "
        "padding excluded (Rafailov et al. 2023). grad_* = ∂L/∂log π of each pair: "
        "∓β σ(−z)/n; π_ref is frozen. Pair 0 of each case has z = 0 up to rounding (|z| < "
        "1e-14: the policy equals the reference on it), so its loss term is log 2.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.dpo_loss"],
    )


def reinforce_pp_vectors(rng):
    cases = []
    for lengths, L, beta, gamma in [([5, 2, 4, 1], 5, 0.1, 1.0), ([3, 6, 6, 2, 4], 6, 0.05, 0.9)]:
        B = len(lengths)
        mask = prefix_mask(lengths, L)
        logp, ref = (np.array(r(-rng.exponential(size=(B, L)))) * mask for _ in range(2))
        scores = np.array(r(rng.normal(size=B)))
        rewards = np.zeros((B, L))
        for i in range(B):  # r_t = −β (log π − log π_ref), + the score on the last real token
            for t in range(lengths[i]):
                rewards[i, t] = -beta * (logp[i, t] - ref[i, t])
            rewards[i, lengths[i] - 1] += scores[i]
        G = np.zeros((B, L))
        for i in range(B):
            for t in range(lengths[i]):
                G[i, t] = sum(gamma ** (s - t) * rewards[i, s] for s in range(t, lengths[i]))
        real = G[mask == 1]
        mean, var = real.mean(), real.var(ddof=1)
        adv = (G - mean) / np.sqrt(var + 1e-8) * mask
        cases.append({"inputs": dict(scores=scores.tolist(), logprobs=logp.tolist(),
                                     ref_logprobs=ref.tolist(), mask=mask.tolist(), beta=beta,
                                     gamma=gamma),
                      "outputs": dict(rewards=rewards.tolist(), returns=G.tolist(),
                                      advantages=adv.tolist())})  # fmt: skip
    write(
        "rlhf_reinforce_pp_advantages",
        "r_t = −β (log π(a_t) − log π_ref(a_t)) + [t = last] score;  G_t = Σ_{s≥t} γ^{s−t} r_s;  "
        "Â_t = (G_t − mean(G)) / sqrt(var(G) + 1e-8)",
        "[B][L] over response tokens; mask is a prefix of ones. mean and the unbiased var are "
        "over every real token of the whole batch (all ranks under data parallelism), not per "
        "prompt: REINFORCE++ (Hu 2025) has no critic and no group baseline. Padding gets 0.",
        {"rtol": 1e-6, "atol": 1e-9},
        cases,
        ["rlhf_ppo_gpt2.kl_shaped_rewards", "rlhf_ppo_gpt2.reinforce_pp_advantages"],
    )


def main():
    rng = np.random.default_rng(2026)
    gae_vectors(rng)
    ppo_vectors(rng)
    ppo_beta_vectors()
    # New generators draw from their own streams, so adding one never changes the others.
    ppo_kl_penalty_vectors(np.random.default_rng(1))
    explained_variance_vectors(np.random.default_rng(6))
    reinforce_vectors(np.random.default_rng(2))
    trpo_vectors(np.random.default_rng(3))
    bradley_terry_vectors(np.random.default_rng(4))
    rlhf_vectors(np.random.default_rng(5))
    a2c_vectors(np.random.default_rng(13))  # A2C block
    gaussian_vectors(np.random.default_rng(11))
    rlhf_critic_free_vectors(np.random.default_rng(7))
    truncated_sampling_vectors(np.random.default_rng(21))
    loss_aggregation_vectors(np.random.default_rng(22))
    grad_accumulation_vectors(np.random.default_rng(23))
    obs_normalizer_vectors(np.random.default_rng(24))
    dpo_vectors(np.random.default_rng(25))
    reinforce_pp_vectors(np.random.default_rng(26))
    print(f"wrote {len(list(HERE.glob('*.json')))} vector files to {HERE}")


if __name__ == "__main__":
    main()
