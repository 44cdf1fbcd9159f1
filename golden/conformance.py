"""Which well-known implementations agree with the golden vectors: python golden/conformance.py

Feeds the inputs of golden/*.json to the peers' *own* functions, imported from the installed
packages (Stable-Baselines3, sb3-contrib, TRL, Tianshou, verl; CleanRL and OpenRLHF are
reported too), and prints one line per peer and vector:

    agrees    within the vector's tolerance (float32 tolerance where the peer computes in
              float32: rtol 1e-4, atol 1e-5, as docs/golden.md says)
    differs   naming the convention that makes the difference
    n/a       with the reason: the peer has no such piece, computes it inline where it cannot
              be called, or is not installed

Where a peer's function needs an object around it (a rollout buffer and its collection loop, a
trainer), the smallest such object is built and the peer's real method runs; only the model's
forward pass is replaced by a stub that returns the vector's numbers. Nothing here imports this
project's scripts. `--markdown` prints the table for golden/README.md. Peers that are not
installed are reported as such; the main environment needs none of them.
"""

import argparse
import contextlib
import functools
import importlib.metadata
import io
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

HERE = Path(__file__).resolve().parent
F32 = {"rtol": 1e-4, "atol": 1e-5}

PEERS = [  # (row name, distribution name, module to import)
    ("Stable-Baselines3", "stable_baselines3", "stable_baselines3"),
    ("sb3-contrib", "sb3_contrib", "sb3_contrib"),
    ("TRL", "trl", "trl"),
    ("Tianshou", "tianshou", "tianshou"),
    ("verl", "verl", "verl.trainer.ppo.core_algos"),
    ("CleanRL", "cleanrl", "cleanrl"),
    ("OpenRLHF", "openrlhf", "openrlhf.models.loss"),
]


def load(name):
    return json.loads((HERE / f"{name}.json").read_text())


def vector_names():
    return sorted(p.stem for p in HERE.glob("*.json"))


def close(actual, expected, tol):
    """True when actual matches expected within tol (shapes must match too)."""
    actual = np.asarray(_numpy(actual), dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return False
    return bool(np.allclose(actual, expected, **tol, equal_nan=False))


def _numpy(x):
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if isinstance(x, list | tuple):
        return [_numpy(v) for v in x]
    return x


def agrees(note=""):
    return ("agrees", note)


def differs(note):
    return ("differs", note)


def na(note):
    return ("n/a", note)


def verdict(ok, agree_note, differ_note):
    return agrees(agree_note) if ok else differs(differ_note)


@contextlib.contextmanager
def quiet():
    """Silence the peers' own prints and warnings while they run."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield


def t64(x):
    import torch

    return torch.tensor(x, dtype=torch.float64)


# ---------------------------------------------------------------- Stable-Baselines3


def sb3_collect(inp, gae_lambda):
    """GAE as SB3 computes it in a real run: A2C's OnPolicyAlgorithm.collect_rollouts (which
    bootstraps a truncation by adding γ V(terminal_observation) to the reward) over a VecEnv
    that replays the vector's rewards and episode ends, then
    RolloutBuffer.compute_returns_and_advantage. The policy is SB3's ActorCriticPolicy with
    its forward pass replaced by a lookup of the vector's V (observation = (t, env))."""
    import torch
    from gymnasium import spaces
    from stable_baselines3 import A2C
    from stable_baselines3.common.policies import ActorCriticPolicy
    from stable_baselines3.common.vec_env import VecEnv

    rewards, values = np.array(inp["rewards"]), np.array(inp["values"])
    term, trunc = np.array(inp["terminated"], bool), np.array(inp["truncated"], bool)
    T, N = rewards.shape

    def obs_at(t):
        return np.array([[t, n] for n in range(N)], np.float32)

    class Replay(VecEnv):
        def __init__(self):
            box = spaces.Box(-1e6, 1e6, (2,), np.float32)
            super().__init__(N, box, spaces.Discrete(2))
            self.t = 0

        def reset(self):
            self.t = 0
            return obs_at(0)

        def step_async(self, actions):
            pass

        def step_wait(self):
            t, self.t = self.t, self.t + 1
            dones = term[t] | trunc[t]
            infos = [{} for _ in range(N)]
            for n in np.flatnonzero(dones):
                infos[n]["terminal_observation"] = obs_at(t + 1)[n]
                infos[n]["TimeLimit.truncated"] = bool(trunc[t, n] and not term[t, n])
            return obs_at(t + 1), rewards[t].astype(np.float32), dones, infos

        def close(self):
            pass

        def get_attr(self, name, indices=None):
            return [None] * N

        def set_attr(self, name, value, indices=None):
            pass

        def env_method(self, name, *args, indices=None, **kwargs):
            return [None] * N

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * N

    def lookup(obs):
        t, n = obs[:, 0].long(), obs[:, 1].long()
        return torch.as_tensor(values, dtype=torch.float32)[t, n][:, None]

    class LookupPolicy(ActorCriticPolicy):
        def forward(self, obs, deterministic=False):
            zeros = torch.zeros(len(obs))
            return zeros.long(), lookup(obs), zeros

        def predict_values(self, obs):
            return lookup(obs)

    with quiet():
        model = A2C(
            LookupPolicy,
            Replay(),
            n_steps=T,
            gamma=inp["gamma"],
            gae_lambda=gae_lambda,
            device="cpu",
            seed=0,
        )
        _, callback = model._setup_learn(T * N, None)
        model.collect_rollouts(model.env, callback, model.rollout_buffer, n_rollout_steps=T)
    buf = model.rollout_buffer
    return buf.advantages, buf.returns


def sb3_cells():
    import stable_baselines3 as sb3
    import torch
    from stable_baselines3.common.distributions import (
        CategoricalDistribution,
        DiagGaussianDistribution,
        kl_divergence,
    )
    from stable_baselines3.common.utils import explained_variance

    cells = {}
    doc = load("gae")
    ok = all(
        close(sb3_collect(c["inputs"], c["inputs"]["lam"])[0], c["outputs"]["advantages"], F32)
        for c in doc["cases"]
    )
    cells["gae"] = verdict(
        ok,
        "collect_rollouts + RolloutBuffer, float32; truncations bootstrapped through the "
        "reward (r += γ V(terminal_observation))",
        "see the vector's conventions",
    )
    doc = load("a2c_n_step_return")
    ok = True
    for c in doc["cases"]:
        adv, ret = sb3_collect(c["inputs"], 1.0)
        ok &= close(adv, c["outputs"]["advantages"], F32) and close(
            ret, c["outputs"]["returns"], F32
        )
    cells["a2c_n_step_return"] = verdict(ok, "A2C's default gae_lambda = 1, float32", "")

    c = load("explained_variance")["cases"][0]
    ev = explained_variance(np.array(c["inputs"]["pred"]), np.array(c["inputs"]["target"]))
    cells["explained_variance"] = verdict(
        close(ev, c["outputs"]["explained_variance"], load("explained_variance")["tolerance"]),
        "common.utils.explained_variance",
        "",
    )

    doc = load("categorical_entropy")
    c = doc["cases"][0]
    logits = t64(c["inputs"]["logits"])
    ent = CategoricalDistribution(logits.shape[1]).proba_distribution(logits).entropy()
    cells["categorical_entropy"] = verdict(
        close(ent.mean(), c["outputs"]["entropy"], doc["tolerance"]),
        "CategoricalDistribution.entropy, per state (averaged here)",
        "",
    )

    doc = load("categorical_kl")
    c = doc["cases"][0]
    p, q = (
        CategoricalDistribution(3).proba_distribution(t64(c["inputs"][k]))
        for k in ("logits_p", "logits_q")
    )
    cells["categorical_kl"] = verdict(
        close(kl_divergence(p, q), c["outputs"]["kl"], doc["tolerance"]),
        "distributions.kl_divergence(p, q)",
        "",
    )

    doc, ok = load("gaussian_log_prob"), True
    for c in doc["cases"]:
        x = c["inputs"]
        mean = t64(x["mean"])
        dist = DiagGaussianDistribution(mean.shape[1]).proba_distribution(mean, t64(x["log_std"]))
        ok &= close(dist.log_prob(t64(x["action"])), c["outputs"]["log_prob"], doc["tolerance"])
    cells["gaussian_log_prob"] = verdict(ok, "DiagGaussianDistribution.log_prob", "")

    doc = load("gaussian_entropy")
    c = doc["cases"][0]
    log_std = t64(c["inputs"]["log_std"])
    dist = DiagGaussianDistribution(log_std.shape[1]).proba_distribution(
        torch.zeros_like(log_std), log_std
    )
    cells["gaussian_entropy"] = verdict(
        close(dist.entropy(), c["outputs"]["entropy"], doc["tolerance"]),
        "DiagGaussianDistribution.entropy",
        "",
    )

    doc, raw_ok, summed_ok = load("gaussian_kl"), True, True
    for c in doc["cases"]:
        x = c["inputs"]
        D = len(x["mean_p"][0])
        p = DiagGaussianDistribution(D).proba_distribution(t64(x["mean_p"]), t64(x["log_std_p"]))
        q = DiagGaussianDistribution(D).proba_distribution(t64(x["mean_q"]), t64(x["log_std_q"]))
        kl = kl_divergence(p, q)
        raw_ok &= close(kl, c["outputs"]["kl"], doc["tolerance"])
        summed_ok &= close(kl.sum(-1), c["outputs"]["kl"], doc["tolerance"])
    cells["gaussian_kl"] = verdict(
        raw_ok,
        "",
        "kl_divergence returns the KL per action dimension [B][D], not summed over "
        "the dimensions" + (" (summed, it agrees)" if summed_ok else ""),
    )

    cells["a2c_rmsprop"] = sb3_rmsprop()
    cells["obs_normalizer_checkpoint"] = sb3_vecnormalize()
    inline = "computed inline in {}, not callable"
    for name in ("ppo_clipped_surrogate", "ppo_value_loss", "k3_kl"):
        cells[name] = na(inline.format("PPO.train()"))
    cells["a2c_loss"] = na(inline.format("A2C.train()"))
    cells["ppo_kl_penalty"] = na("no KL-penalty PPO (target_kl only stops the epochs early)")
    cells["ppo_adaptive_beta"] = na("no adaptive β (target_kl only stops the epochs early)")
    return sb3.__version__, cells


def sb3_rmsprop():
    import torch
    from stable_baselines3 import A2C
    from stable_baselines3.common.sb2_compat.rmsprop_tf_like import RMSpropTFLike

    doc = load("a2c_rmsprop")
    c = doc["cases"][0]
    x = c["inputs"]

    def run(optimizer_class, **kwargs):
        theta = t64(x["theta"]).requires_grad_(True)
        opt = optimizer_class([theta], lr=x["learning_rate"], **kwargs)
        out = []
        for g in x["grads"]:
            theta.grad = t64(g)
            opt.step()
            out.append(theta.detach().clone())
        return torch.stack(out)

    with quiet():
        a2c = A2C("MlpPolicy", "CartPole-v1", device="cpu", seed=0)
    opt = a2c.policy.optimizer  # the optimizer A2C builds by default
    group = opt.param_groups[0]
    kwargs = {k: group[k] for k in ("alpha", "eps", "weight_decay", "momentum", "centered")}
    default_ok = close(run(type(opt), **kwargs), c["outputs"]["thetas"], doc["tolerance"])
    tf_ok = close(
        run(RMSpropTFLike, alpha=0.99, eps=1e-5), c["outputs"]["thetas"], doc["tolerance"]
    )
    note = f"A2C's default optimizer ({type(opt).__name__}, α={group['alpha']}, ε={group['eps']})"
    if default_ok and not tf_ok:
        note += "; the optional RMSpropTFLike differs (ε inside the square root, v₀ = 1)"
    return verdict(default_ok, note, note)


def sb3_vecnormalize():
    """VecNormalize's statistics (RunningMeanStd.update, which step_wait calls), saved with
    VecNormalize.save and loaded with VecNormalize.load into a fresh wrapper, frozen."""
    import gymnasium as gym
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    doc = load("obs_normalizer_checkpoint")
    c = doc["cases"][0]
    x, want = c["inputs"], c["outputs"]
    D = len(x["eval_obs"][0])

    def make():
        env = gym.make("Pendulum-v1")  # any Box env: only its observation shape is read here
        env.observation_space = gym.spaces.Box(-np.inf, np.inf, (D,), np.float32)
        return env

    with quiet(), tempfile.TemporaryDirectory() as tmp:
        venv = VecNormalize(
            DummyVecEnv([make]), norm_obs=True, norm_reward=False, clip_obs=x["clip"], epsilon=1e-8
        )
        for batch in x["stream"]:
            venv.obs_rms.update(np.array(batch))
        before = venv.normalize_obs(np.array(x["eval_obs"]))
        path = os.path.join(tmp, "vecnormalize.pkl")
        venv.save(path)
        loaded = VecNormalize.load(path, DummyVecEnv([make]))
        loaded.training = False
        after = loaded.normalize_obs(np.array(x["eval_obs"]))
    W = np.array(x["W"])
    round_trip = np.array_equal(before, after)
    stats = close(loaded.obs_rms.mean, want["mean"], F32) and close(
        loaded.obs_rms.var, want["var"], F32
    )
    actions = close(after @ W, want["actions"], F32)
    rel = float(np.max(np.abs(loaded.obs_rms.var / np.array(want["var"]) - 1)))
    note = (
        f"RunningMeanStd starts from count 1e-4 with μ = 0, σ² = 1 (max rel. error of σ² "
        f"here {rel:.1e}); save/load round trip {'exact' if round_trip else 'NOT exact'}"
    )
    return verdict(stats and actions and round_trip, note, note)


# ---------------------------------------------------------------- sb3-contrib


def sb3_contrib_cells():
    import sb3_contrib
    import torch
    from sb3_contrib import TRPO
    from sb3_contrib.common.utils import conjugate_gradient_solver, flat_grad
    from stable_baselines3.common.distributions import CategoricalDistribution, kl_divergence

    cells = {}
    doc = load("conjugate_gradient")
    results = []
    for c in doc["cases"]:
        x = c["inputs"]
        A, b = t64(x["A"]), t64(x["b"])
        torch.manual_seed(0)
        sol = conjugate_gradient_solver(
            lambda v, A=A: A @ v,
            b,
            max_iter=x["iters"],
            residual_tol=(x["tol"] * b.norm()).item() ** 2,
        )
        results.append((x["iters"], close(sol, c["outputs"]["x"], doc["tolerance"])))
    converged = [ok for iters, ok in results if iters >= len(doc["cases"][0]["inputs"]["b"])]
    cells["conjugate_gradient"] = verdict(
        all(ok for _, ok in results),
        "common.utils.conjugate_gradient_solver",
        "conjugate_gradient_solver starts from x₀ = 1e-4·N(0, I), not 0, so the truncated "
        "iterates x₁..x₃ differ by ~1e-4"
        + ("; converged (iters ≥ n) it agrees" if all(converged) else ""),
    )

    doc, ok = load("fisher_vector_product"), True
    trpo = object.__new__(TRPO)  # hessian_vector_product reads only cg_damping
    for c in doc["cases"]:
        x = c["inputs"]
        trpo.cg_damping = x["damping"]
        W = t64(x["W"]).requires_grad_(True)
        obs = t64(x["obs"])
        dist = CategoricalDistribution(W.shape[1]).proba_distribution(obs @ W)
        old = CategoricalDistribution(W.shape[1]).proba_distribution((obs @ W).detach())
        # as TRPO.train builds it: kl_divergence(distribution, old_distribution).mean()
        grad_kl = flat_grad(
            kl_divergence(dist, old).mean(), [W], create_graph=True, retain_graph=True
        )
        fv = trpo.hessian_vector_product([W], grad_kl, t64(x["v"]))
        ok &= close(fv, c["outputs"]["Fv"], doc["tolerance"])
    cells["fisher_vector_product"] = verdict(
        ok,
        "TRPO.hessian_vector_product of its KL(π_θ ‖ π_θold): the same Hessian as the "
        "paper's KL(π_θold ‖ π_θ) at θ = θold",
        "",
    )
    cells["trpo_step"] = na(
        "the step size and line search are inline in TRPO.train(); read there, its line "
        "search bounds KL(π_θ ‖ π_θold), the reverse of the paper's KL(π_θold ‖ π_θ)"
    )
    cells["trpo_surrogate"] = na("computed inline in TRPO.train()")
    return sb3_contrib.__version__, cells


# ---------------------------------------------------------------- TRL


@functools.cache
def trl_defaults():
    """GRPOConfig's and DPOConfig's defaults on a CPU, and the Accelerator, made once: a
    TrainingArguments is slow to build, and building one resets the accelerator's state, so
    the Accelerator comes last."""
    from accelerate import Accelerator
    from trl import DPOConfig, GRPOConfig

    kwargs = dict(output_dir=tempfile.gettempdir(), report_to="none", use_cpu=True, bf16=False)
    with quiet():
        grpo, dpo = GRPOConfig(**kwargs), DPOConfig(**kwargs)
    return grpo, Accelerator(cpu=True), dpo


def trl_grpo_trainer(
    loss_type,
    logps,
    max_completion_length,
    *,
    beta=0.0,
    bias_correction=None,
    accumulation=1,
    steps_per_generation=1,
):
    """A GRPOTrainer whose _compute_loss is TRL's own, built without __init__ (which would
    load a model and a dataset): the attributes _compute_loss reads come from a default
    GRPOConfig; only the forward pass (_get_per_token_logps_and_entropies) is replaced, by
    one that returns the given log-probs."""
    import copy

    import torch
    from trl import GRPOTrainer

    cfg, accelerator, _ = trl_defaults()
    cfg = copy.copy(cfg)  # the defaults, with the settings of this run
    cfg.loss_type, cfg.beta, cfg.max_completion_length = loss_type, beta, max_completion_length
    cfg.gradient_accumulation_steps = accumulation
    cfg.steps_per_generation = steps_per_generation
    if bias_correction is not None:
        cfg.use_bias_correction_kl = bias_correction
    tr = object.__new__(GRPOTrainer)
    tr.args = cfg
    tr.model = torch.nn.Module().train()
    tr.accelerator = accelerator
    tr._metrics = {"train": __import__("collections").defaultdict(list)}
    tr.loss_type, tr.beta = cfg.loss_type, cfg.beta
    tr.epsilon_low = cfg.epsilon
    tr.epsilon_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
    tr.importance_sampling_level = cfg.importance_sampling_level
    tr.top_entropy_quantile = cfg.top_entropy_quantile
    tr.off_policy_mask_threshold = cfg.off_policy_mask_threshold
    tr.use_vllm, tr.vllm_importance_sampling_correction = False, False
    tr.max_completion_length = cfg.max_completion_length
    tr.current_gradient_accumulation_steps = accumulation
    tr._entropy_bonus_enabled, tr.aux_loss_enabled = False, False
    tr._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    return tr


def trl_inputs(mask, advantages, old, ref=None, num_items=None):
    import torch

    B = mask.shape[0]
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long),
        "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(mask.shape, dtype=torch.long),
        "completion_mask": mask,
        "advantages": advantages,
        "old_per_token_logps": old,
    }
    if ref is not None:
        inputs["ref_per_token_logps"] = ref
    if num_items is not None:
        inputs["num_items_in_batch"] = torch.tensor(float(num_items))
    return inputs


def trl_cells():
    import torch
    import trl
    from trl.trainer.utils import selective_log_softmax

    cells = {}
    # GRPO's loss (and Dr. GRPO's): TRL's defaults, and with its bias-corrected KL off
    doc = load("rlhf_grpo_loss")
    default_ok, plain_ok, default_flag = True, True, None
    for c in doc["cases"]:
        x, want = c["inputs"], c["outputs"]
        loss_type = "dr_grpo" if x["constant"] else "grpo"
        mask = t64(x["mask"])
        for correction in (None, False):
            logp = t64(x["logprobs"]).requires_grad_(True)
            tr = trl_grpo_trainer(
                loss_type, logp, mask.shape[1], beta=x["beta"], bias_correction=correction
            )
            if correction is None:
                default_flag = tr.args.use_bias_correction_kl
            inputs = trl_inputs(
                mask, t64(x["advantages"])[:, 0], t64(x["old_logprobs"]), t64(x["ref_logprobs"])
            )
            with quiet():
                loss = tr._compute_loss(None, inputs)
            ok = close(loss, want["loss"], doc["tolerance"]) and close(
                torch.autograd.grad(loss, logp)[0], want["grad_logprobs"], doc["tolerance"]
            )
            if correction is None:
                default_ok &= ok
            else:
                plain_ok &= ok
    note = "GRPOTrainer._compute_loss, loss_type grpo / dr_grpo (max_completion_length = L)"
    if not default_ok and plain_ok and default_flag:
        cells["rlhf_grpo_loss"] = differs(
            "default use_bias_correction_kl=True multiplies the k3 term by π/π_old (a "
            "differentiable ratio, so the gradient changes even at ratio 1); with it off, agrees"
        )
    else:
        cells["rlhf_grpo_loss"] = verdict(default_ok, note, "see the vector's conventions")

    cells["rlhf_loss_aggregation"] = trl_aggregation()
    cells["rlhf_grad_accumulation"] = trl_accumulation()

    doc, ok = load("rlhf_token_logprobs"), True
    for c in doc["cases"]:
        x = c["inputs"]
        lp = selective_log_softmax(t64(x["logits"]), torch.tensor(x["tokens"]), x["temperature"])
        ok &= close(lp, c["outputs"]["logprobs"], doc["tolerance"])
    cells["rlhf_token_logprobs"] = verdict(ok, "trainer.utils.selective_log_softmax(z, y, T)", "")

    doc, plain, truncated = load("rlhf_truncated_sampling_logprobs"), True, True
    for c in doc["cases"]:
        x, want = c["inputs"], c["outputs"]
        lp = selective_log_softmax(t64(x["logits"]), torch.tensor(x["tokens"]), x["temperature"])
        if x["top_k"] == 0 and x["top_p"] == 1.0:
            plain &= close(lp, want["logprobs_sampling"], doc["tolerance"])
        else:
            truncated &= close(lp, want["logprobs_sampling"], doc["tolerance"])
            full = close(lp, want["logprobs_full"], doc["tolerance"])
    cells["rlhf_truncated_sampling_logprobs"] = verdict(
        plain and truncated,
        "",
        "selective_log_softmax (the trainer's scoring) is the full-vocabulary log-prob at T: "
        "it agrees without truncation but under top-k/top-p "
        + (
            "equals logprobs_full, so the ratio to the sampler's log-probs is the kept mass "
            "< 1 (TRL #6789)"
            if full
            else "matches neither"
        ),
    )

    cells["bradley_terry_loss"] = trl_reward_loss()
    cells["rlhf_dpo_loss"] = trl_dpo_loss()
    cells["rlhf_reinforce_pp_advantages"] = na(
        "no REINFORCE++: GRPOTrainer's scale_rewards='batch' divides by the batch's std but "
        "keeps the per-group mean and has no per-token KL in the return (inline in "
        "_generate_and_score_completions)"
    )
    inline = "computed inline in {}, together with generation; not callable alone"
    cells["rlhf_group_advantages"] = na(
        inline.format("GRPOTrainer/RLOOTrainer._generate_and_score_completions")
    )
    cells["rlhf_kl_estimators"] = na(
        "k3 (GRPO's loss) and k1 (RLOO's reward) are inline expressions in the trainers"
    )
    for name in (
        "rlhf_token_gae",
        "rlhf_kl_shaped_rewards",
        "rlhf_token_ppo_losses",
        "rlhf_masked_whiten",
        "rlhf_adaptive_kl_controller",
    ):
        cells[name] = na("PPO lives in trl.experimental (not imported here); inline there")
    return trl.__version__, cells


def trl_aggregation():
    """Each of TRL's loss_type aggregations at ratio 1 and β = 0, where per_token_loss = −Â:
    advantages [B][L] = −ℓ give TRL's per_token_loss = ℓ exactly."""
    import torch

    doc = load("rlhf_loss_aggregation")
    names = {
        "bnpo": "token-mean",
        "dapo": "token-mean",
        "grpo": "seq-mean-token-mean",
        "luspo": "seq-mean-token-sum",
        "dr_grpo": "seq-mean-token-sum-norm",
    }
    bad = []
    for c in doc["cases"]:
        x = c["inputs"]
        ell, mask = t64(x["per_token_loss"]), t64(x["mask"])
        for loss_type, mode in names.items():
            logp = torch.zeros_like(ell).requires_grad_(True)
            tr = trl_grpo_trainer(loss_type, logp, mask.shape[1])
            inputs = trl_inputs(mask, -ell, torch.zeros_like(ell), num_items=mask.sum())
            with quiet():
                loss = tr._compute_loss(None, inputs)
            want = c["outputs"][mode]
            grad = torch.autograd.grad(loss, logp)[0]  # = ℓ · ∂L/∂ℓ at ratio 1
            if not (
                close(loss, want["loss"], doc["tolerance"])
                and close(grad, ell * t64(want["grad_per_token_loss"]), doc["tolerance"])
            ):
                bad.append(loss_type)
    mapping = ", ".join(f"{k} = {v}" for k, v in names.items())
    return verdict(
        not bad, f"GRPOTrainer._compute_loss: {mapping}", f"{sorted(set(bad))} differ ({mapping})"
    )


def trl_accumulation():
    """G micro-batches through _compute_loss with gradient accumulation G, the gradients
    summed, against one large batch."""
    import torch

    doc = load("rlhf_grad_accumulation")
    names = {
        "dapo": "token-mean",
        "bnpo": "token-mean",
        "grpo": "seq-mean-token-mean",
        "dr_grpo": "seq-mean-token-sum-norm",
    }
    result = {k: [] for k in names}
    for c in doc["cases"]:
        x = c["inputs"]
        ell, mask, micro = t64(x["per_token_loss"]), t64(x["mask"]), x["micro_batches"]
        G = len(micro)
        for loss_type, mode in names.items():
            logp = torch.zeros_like(ell).requires_grad_(True)
            total = 0.0
            for rows in micro:
                # TRL passes num_items_in_batch = the token count of the generation batch,
                # which spans G steps here (steps_per_generation = G)
                tr = trl_grpo_trainer(
                    loss_type, logp[rows], mask.shape[1], accumulation=G, steps_per_generation=G
                )
                inputs = trl_inputs(
                    mask[rows], -ell[rows], torch.zeros_like(ell[rows]), num_items=mask.sum()
                )
                with quiet():
                    total = total + tr._compute_loss(None, inputs)
            want = c["outputs"][mode]
            grad = torch.autograd.grad(total, logp)[0]
            ok = close(total, want["loss"], doc["tolerance"]) and close(
                grad, ell * t64(want["grad_per_token_loss"]), doc["tolerance"]
            )
            naive = close(total, want["naive_loss"], doc["tolerance"])
            result[loss_type].append("ok" if ok else ("naive" if naive else "other"))
    if all(r == "ok" for rs in result.values() for r in rs):
        return agrees("every loss_type")
    parts = []
    for loss_type, rs in result.items():
        if all(r == "ok" for r in rs):
            parts.append(f"{loss_type} agrees")
        elif all(r in ("ok", "naive") for r in rs):
            parts.append(
                f"{loss_type} normalises per micro-batch (naive) in "
                f"{sum(r == 'naive' for r in rs)}/{len(rs)} cases"
            )
        else:
            parts.append(f"{loss_type}: {rs}")
    return differs("; ".join(parts))


def trl_reward_loss():
    """RewardTrainer.compute_loss with a stub model whose logits are the vector's rewards."""
    import torch
    from accelerate import Accelerator
    from trl import RewardTrainer

    doc = load("bradley_terry_loss")
    c = doc["cases"][0]
    rc = t64(c["inputs"]["r_chosen"]).requires_grad_(True)
    rr = t64(c["inputs"]["r_rejected"]).requires_grad_(True)

    class Stub(torch.nn.Module):
        def forward(self, **inputs):
            return SimpleNamespace(logits=torch.cat([rc, rr])[:, None])

    tr = object.__new__(RewardTrainer)
    tr.model = Stub().train()
    tr.args = SimpleNamespace(center_rewards_coefficient=None)
    tr.accelerator = Accelerator(cpu=True)
    tr._metrics = {"train": __import__("collections").defaultdict(list)}
    tr._total_train_tokens, tr._tp_size = 0, 1
    n = len(rc)
    inputs = {
        "input_ids": torch.zeros(2 * n, 1, dtype=torch.long),
        "attention_mask": torch.ones(2 * n, 1, dtype=torch.long),
    }
    with quiet():
        loss = tr.compute_loss(tr.model, inputs)
    grads = torch.autograd.grad(loss, [rc, rr])
    tol = doc["tolerance"]
    ok = (
        close(loss, c["outputs"]["loss"], tol)
        and close(grads[0], c["outputs"]["grad_chosen"], tol)
        and close(grads[1], c["outputs"]["grad_rejected"], tol)
    )
    return verdict(ok, "RewardTrainer.compute_loss (stable logsigmoid, margins ±45 included)", "")


def trl_dpo_run(x, precomputed, label_smoothing=None):
    """DPOTrainer.compute_loss (its _compute_loss) on one case, the trainer built without
    __init__ from a default DPOConfig, as trl_grpo_trainer does. Policy and reference are
    stubs of the fused LM head that TRL adds to the model (`model(..., labels=labels,
    fused_lm_head=True).log_probs`, 0 where the shifted label is -100): each response's log π
    is spread over its 1 to 3 completion tokens (right padding after a 2-token prompt), so the
    trainer's own sum over tokens gives back the vector's number. The reference comes
    precomputed (precompute_ref_log_probs, inputs["ref_chosen_logps"]) or from the
    reference-model stub. Returns the loss, its gradients wrt the policy's log π (chosen,
    rejected) and the logged rewards/margins."""
    import collections

    import torch
    from trl import DPOTrainer

    _, accelerator, cfg = trl_defaults()
    n = len(x["logp_chosen"])
    chosen = t64(x["logp_chosen"]).requires_grad_(True)
    rejected = t64(x["logp_rejected"]).requires_grad_(True)
    prompt, width = 2, 3
    completion_mask = torch.zeros(2 * n, prompt + width, dtype=torch.long)
    for i in range(2 * n):
        completion_mask[i, prompt : prompt + 1 + i % width] = 1

    class FusedHeadStub(torch.nn.Module):
        is_gradient_checkpointing = False

        def __init__(self, logps):
            super().__init__()
            self.logps = logps

        def forward(self, labels, fused_lm_head=False, **kwargs):
            assert fused_lm_head
            real = (labels[:, 1:] != -100).to(torch.float64)
            per_token = self.logps()[:, None] * real / real.sum(1, keepdim=True)
            zeros = torch.zeros_like(per_token)
            return SimpleNamespace(
                log_probs=per_token, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
            )

    tr = object.__new__(DPOTrainer)
    tr.args = cfg
    tr.model = FusedHeadStub(lambda: torch.cat([chosen, rejected])).train()
    reference = torch.cat([t64(x["ref_chosen"]), t64(x["ref_rejected"])])
    tr.ref_model = None if precomputed else FusedHeadStub(lambda: reference).eval()
    tr.accelerator = accelerator
    tr.beta, tr.precompute_ref_logps = x["beta"], precomputed
    tr.loss_types = cfg.loss_type
    tr.loss_weights = cfg.loss_weights or [1.0] * len(cfg.loss_type)
    tr.ld_alpha, tr.use_weighting = cfg.ld_alpha, cfg.use_weighting
    tr.f_divergence_type, tr.f_alpha_divergence_coef = (
        cfg.f_divergence_type,
        cfg.f_alpha_divergence_coef,
    )
    tr.label_smoothing = cfg.label_smoothing if label_smoothing is None else label_smoothing
    tr.aux_loss_enabled = False
    tr._metrics = {"train": collections.defaultdict(list)}
    tr._total_train_tokens, tr._tp_size = 0, 1
    in_prompt = (torch.arange(prompt + width) < prompt).long()
    inputs = {
        "input_ids": torch.zeros_like(completion_mask),
        "attention_mask": completion_mask | in_prompt,
        "completion_mask": completion_mask,
    }
    if precomputed:
        inputs["ref_chosen_logps"] = t64(x["ref_chosen"])
        inputs["ref_rejected_logps"] = t64(x["ref_rejected"])
    with quiet():
        loss = tr.compute_loss(tr.model, inputs)
    grads = torch.autograd.grad(loss, [chosen, rejected])
    return loss.detach(), grads, tr._metrics["train"]["rewards/margins"][-1]


def trl_dpo_loss():
    """DPO's loss (Rafailov et al. 2023) with DPOConfig's defaults: loss_type ['sigmoid'],
    f_divergence_type reverse_kl, no length weighting (ld_alpha), no WPO weighting."""
    doc = load("rlhf_dpo_loss")
    cfg, tol = trl_defaults()[2], doc["tolerance"]
    bad, summed, smoothing_ignored = [], True, True
    for i, c in enumerate(doc["cases"]):
        want, losses = c["outputs"], []
        for precomputed in (True, False):
            loss, (g_chosen, g_rejected), margin = trl_dpo_run(c["inputs"], precomputed)
            losses.append(loss)
            summed &= close(loss, want["loss"] * len(g_chosen), tol)
            checks = {
                "loss": close(loss, want["loss"], tol),
                "grad_logp_chosen": close(g_chosen, want["grad_logp_chosen"], tol),
                "grad_logp_rejected": close(g_rejected, want["grad_logp_rejected"], tol),
                "rewards/margins": close(margin, want["margin"], tol),
            }
            bad += [f"case {i} {k}" for k, ok in checks.items() if not ok]
        smoothed, _, _ = trl_dpo_run(c["inputs"], True, label_smoothing=0.1)
        smoothing_ignored &= close(smoothed, losses[0], tol)
    settings = (
        f"loss_type {cfg.loss_type}, f_divergence_type {cfg.f_divergence_type}, "
        f"label_smoothing {cfg.label_smoothing}"
    )
    note = (
        f"DPOTrainer._compute_loss ({settings}): −mean over pairs of log σ(β·Δ), reference "
        "precomputed or from a reference model; its gradient wrt the policy's log π and the "
        "logged rewards/margins agree"
    )
    if smoothing_ignored:
        note += "; label_smoothing does not enter 'sigmoid' (0.1 leaves the loss unchanged)"
    why = "; it sums over the pairs instead of averaging" if summed else ""
    bad = ", ".join(dict.fromkeys(bad))  # each once, whichever way the reference came
    return verdict(not bad, note, f"{settings}: {bad} differ{why}")


# ---------------------------------------------------------------- Tianshou


def tianshou_returns(rewards, v_s, v_s_, terminated, truncated, gamma, lam):
    """Algorithm.compute_episodic_return, one env (column) at a time, over a ReplayBuffer
    that holds the rollout in order."""
    from tianshou.algorithm.algorithm_base import Algorithm
    from tianshou.data import Batch, ReplayBuffer

    T, N = rewards.shape
    adv, ret = np.zeros((T, N)), np.zeros((T, N))
    for n in range(N):
        buf = ReplayBuffer(T)
        for t in range(T):
            buf.add(
                Batch(
                    obs=np.array([t]),
                    act=0,
                    rew=rewards[t, n],
                    terminated=bool(terminated[t, n]),
                    truncated=bool(truncated[t, n]),
                    obs_next=np.array([t + 1]),
                    info={},
                )
            )
        idx = np.arange(T)
        with quiet():
            r_, a_ = Algorithm.compute_episodic_return(
                buf[idx],
                buf,
                idx,
                v_s_=v_s_[:, n].copy(),
                v_s=v_s[:, n].copy(),
                gamma=gamma,
                gae_lambda=lam,
            )
        adv[:, n], ret[:, n] = a_, r_
    return adv, ret


def tianshou_cells():
    import tianshou
    from tianshou.utils import RunningMeanStd

    cells = {}
    doc, ok = load("gae"), True
    for c in doc["cases"]:
        x = c["inputs"]
        values = np.array(x["values"])
        adv, _ = tianshou_returns(
            np.array(x["rewards"]),
            values[:-1],
            values[1:],
            np.array(x["terminated"]),
            np.array(x["truncated"]),
            x["gamma"],
            x["lam"],
        )
        ok &= close(adv, c["outputs"]["advantages"], doc["tolerance"])
    cells["gae"] = verdict(
        ok,
        "Algorithm.compute_episodic_return (v_s_ masked by ~terminated)",
        "see the vector's conventions",
    )
    doc, ok = load("a2c_n_step_return"), True
    for c in doc["cases"]:
        x = c["inputs"]
        values = np.array(x["values"])
        term, trunc = np.array(x["terminated"]), np.array(x["truncated"])
        adv, ret = tianshou_returns(
            np.array(x["rewards"]), values[:-1], values[1:], term, trunc & ~term, x["gamma"], 1.0
        )
        ok &= close(adv, c["outputs"]["advantages"], doc["tolerance"])
        ok &= close(ret, c["outputs"]["returns"], doc["tolerance"])
    cells["a2c_n_step_return"] = verdict(ok, "compute_episodic_return with gae_lambda = 1", "")
    doc, ok = load("reinforce_reward_to_go"), True
    for c in doc["cases"]:
        x = c["inputs"]
        rewards, ends = np.array(x["rewards"]), np.array(x["ends"], bool)
        # Monte Carlo returns: v_s = 0, λ = 1, and V(s') = the bootstrap where an episode ends
        v_s_ = np.where(ends, np.array(x["bootstrap"]), 0.0)
        _, ret = tianshou_returns(
            rewards, np.zeros_like(rewards), v_s_, np.zeros_like(ends), ends, x["gamma"], 1.0
        )
        ok &= close(ret, c["outputs"]["returns"], doc["tolerance"])
    cells["reinforce_reward_to_go"] = verdict(
        ok, "compute_episodic_return, v_s = 0, λ = 1, V(s') = bootstrap at episode ends", ""
    )

    doc = load("obs_normalizer_checkpoint")
    x, want = doc["cases"][0]["inputs"], doc["cases"][0]["outputs"]
    rms = RunningMeanStd(clip_max=x["clip"])
    for batch in x["stream"]:
        rms.update(np.array(batch))
    stats = close(rms.mean, want["mean"], doc["tolerance"]) and close(
        rms.var, want["var"], doc["tolerance"]
    )
    normed = rms.norm(np.array(x["eval_obs"]))
    norm_ok = close(normed, want["normalized_eval_obs"], F32)
    cells["obs_normalizer_checkpoint"] = verdict(
        stats and norm_ok,
        "utils.RunningMeanStd (the statistics only; saving them is the caller's job)",
        ("statistics agree; " if stats else "statistics differ; ")
        + f"norm() adds ε = {rms.eps:.3g} (float32 machine ε) inside the square root, not 1e-8, "
        "which matters for features whose variance is small (here 1e-4)",
    )
    return tianshou.__version__, cells


# ---------------------------------------------------------------- verl


def verl_cells():
    import torch
    from verl.trainer.ppo import core_algos
    from verl.utils import torch_functional as verl_F

    version = importlib.metadata.version("verl")
    cells = {}

    doc, ret_ok, adv_ok, white_ok = load("rlhf_token_gae"), True, True, True
    for c in doc["cases"]:
        x, want = c["inputs"], c["outputs"]
        mask = t64(x["mask"])
        # verl's callers hand it rewards and values that are already 0 on padding
        adv, ret = core_algos.compute_gae_advantage_return(
            t64(x["rewards"]) * mask, t64(x["values"]) * mask, mask, x["gamma"], x["lam"]
        )
        ret_ok &= close(ret * mask, want["returns"], doc["tolerance"])
        adv_ok &= close(adv, want["advantages"], doc["tolerance"])
        whitened = verl_F.masked_whiten(t64(want["advantages"]), mask) * mask
        white_ok &= close(adv * mask, whitened, doc["tolerance"])
    cells["rlhf_token_gae"] = verdict(
        ret_ok and adv_ok,
        "compute_gae_advantage_return",
        ("returns agree; " if ret_ok else "returns differ; ")
        + (
            "advantages come back already whitened over the batch's response tokens "
            "(whitened, the vector's advantages agree)"
            if white_ok
            else "advantages differ"
        ),
    )

    doc, results = load("rlhf_group_advantages"), {"grpo": True, "dr_grpo": True, "rloo": True}
    for c in doc["cases"]:
        x, want = c["inputs"], c["outputs"]
        k = x["k"]
        scores = t64(x["rewards"])[:, None]
        mask = torch.ones_like(scores)
        index = np.repeat(np.arange(len(x["rewards"]) // k), k)
        grpo, _ = core_algos.compute_grpo_outcome_advantage(
            scores.clone(), mask, index, epsilon=x["eps"]
        )
        dr, _ = core_algos.compute_grpo_outcome_advantage(
            scores.clone(), mask, index, norm_adv_by_std_in_grpo=False
        )
        rloo, _ = core_algos.compute_rloo_outcome_advantage(scores.clone(), mask, index)
        results["grpo"] &= close(grpo[:, 0], want["grpo"], doc["tolerance"])
        results["dr_grpo"] &= close(dr[:, 0], want["dr_grpo"], doc["tolerance"])
        results["rloo"] &= close(rloo[:, 0], want["rloo"], doc["tolerance"])
    cells["rlhf_group_advantages"] = verdict(
        all(results.values()),
        "compute_grpo_outcome_advantage (± std), compute_rloo_outcome_advantage",
        f"{[k for k, v in results.items() if not v]} differ",
    )

    doc, est = load("rlhf_kl_estimators"), {"k1": "kl", "k2": "mse", "k3": "low_var_kl"}
    bad, clamped = [], True
    for c in doc["cases"]:
        x = c["inputs"]
        for name, mode in est.items():
            value = core_algos.kl_penalty(t64(x["logprobs"]), t64(x["ref_logprobs"]), mode)
            if not close(value, c["outputs"][name], doc["tolerance"]):
                bad.append(name)
                want = np.clip(c["outputs"][name], -10, 10)
                clamped &= name == "k3" and close(value, want, doc["tolerance"])
                largest = float(np.max(c["outputs"][name]))
    cells["rlhf_kl_estimators"] = verdict(
        not bad,
        "kl_penalty: kl = k1, mse = k2, low_var_kl = k3",
        f"low_var_kl (k3) is clamped to [−10, 10] (here k3 = {largest:.1f} becomes 10), which "
        "biases E[k3] below the KL; k1 (kl) and k2 (mse) agree"
        if clamped
        else f"{sorted(set(bad))} differ",
    )

    doc, bad, factors = load("rlhf_loss_aggregation"), [], []
    for c in doc["cases"]:
        x = c["inputs"]
        ell, mask = t64(x["per_token_loss"]), t64(x["mask"])
        for mode, want in c["outputs"].items():
            e = ell.clone().requires_grad_(True)
            loss = core_algos.agg_loss(e, mask, mode)
            g = torch.autograd.grad(loss, e)[0]
            if not (
                close(loss, want["loss"], doc["tolerance"])
                and close(g, want["grad_per_token_loss"], doc["tolerance"])
            ):
                bad.append(mode)
                if mode == "seq-mean-token-sum-norm":
                    factors.append(f"×{loss.item() / want['loss']:.3g} at B = {len(ell)}")
    cells["rlhf_loss_aggregation"] = verdict(
        not bad,
        "agg_loss, every loss_agg_mode",
        ", ".join(sorted(set(bad)))
        + " differ"
        + (
            ": seq-mean-token-sum-norm divides Σ ℓ by L (the mask's width) instead of the "
            "constant B·L, so it is B times Dr. GRPO's loss (" + ", ".join(factors) + ")"
            if "seq-mean-token-sum-norm" in bad
            else ""
        ),
    )
    cells["rlhf_grad_accumulation"] = na(
        "the micro-batch scaling (loss / gradient_accumulation) is inline in the actor's "
        "update_policy; agg_loss alone aggregates one micro-batch"
    )

    doc = load("rlhf_token_ppo_losses")
    c = doc["cases"][0]
    x, want = c["inputs"], c["outputs"]
    mask = t64(x["mask"])
    logp = t64(x["logprobs"]).requires_grad_(True)
    out = core_algos.compute_policy_loss(
        old_log_prob=t64(x["old_logprobs"]),
        log_prob=logp,
        advantages=t64(x["advantages"]),
        response_mask=mask,
        cliprange=x["clip_coef"],
        loss_agg_mode="token-mean",
    )
    pg_loss, pg_clipfrac = out[0], out[1]
    loss_ok = close(pg_loss, want["policy"]["loss"], doc["tolerance"]) and close(
        torch.autograd.grad(pg_loss, logp)[0], want["policy"]["grad_logprobs"], doc["tolerance"]
    )
    frac_ok = close(pg_clipfrac, want["policy"]["clipfrac"], doc["tolerance"])
    value_notes = []
    for v in want["value"]:
        vals = t64(x["values"]).requires_grad_(True)
        vl = core_algos.compute_value_loss(
            vals, t64(x["returns"]), t64(x["old_values"]), mask, cliprange_value=v["clip_coef"]
        )
        vl = vl[0] if isinstance(vl, tuple) else vl
        if not close(vl, v["loss"], doc["tolerance"]):
            value_notes.append(f"value clip {v['clip_coef']}")
    notes = []
    if not loss_ok:
        notes.append(
            "policy loss: dual-clip (Ye et al. 2020, clip_ratio_c = 3) bounds "
            "−ρÂ by 3|Â| where Â < 0"
        )
    if not frac_ok:
        notes.append(
            "pg_clipfrac counts only the tokens where the clip is active (by sign of "
            "Â), not every |ρ − 1| > ε"
        )
    if value_notes:
        notes.append(", ".join(value_notes) + " differ: c = 0 clamps V to V_old (no 'off')")
    cells["rlhf_token_ppo_losses"] = verdict(
        not notes, "compute_policy_loss, compute_value_loss", "; ".join(notes)
    )

    doc, ok = load("rlhf_masked_whiten"), True
    for c in doc["cases"]:
        x = c["inputs"]
        mask = t64(x["mask"])
        ok &= close(
            verl_F.masked_whiten(t64(x["x"]), mask) * mask,
            c["outputs"]["whitened"],
            doc["tolerance"],
        )
    cells["rlhf_masked_whiten"] = verdict(
        ok, "utils.torch_functional.masked_whiten (masked entries zeroed here)", ""
    )

    doc, bad = load("rlhf_adaptive_kl_controller"), []
    for c in doc["cases"]:
        x = c["inputs"]
        try:
            ctl = core_algos.AdaptiveKLController(x["beta0"], x["kl_target"], x["horizon"])
            betas = []
            for kl in x["kls"]:
                ctl.update(kl, x["n_steps"])
                betas.append(ctl.value)
            ok = close(betas, c["outputs"]["betas"], doc["tolerance"])
        except ZeroDivisionError:
            ok = False
        if not ok:
            bad.append(x["kl_target"])
    cells["rlhf_adaptive_kl_controller"] = verdict(
        not bad,
        "AdaptiveKLController.update",
        f"kl_target {bad}: no 'kl_target = 0 keeps β fixed' (a FixedKLController is chosen "
        "instead); the other cases agree"
        if bad == [0.0]
        else f"kl_target {bad} differ",
    )
    cells["rlhf_kl_shaped_rewards"] = na(
        "the score is placed on the last token by the reward manager and the masked KL reward "
        "is inline in ray_trainer.apply_kl_penalty; core_algos.compute_rewards takes the "
        "scores already placed"
    )
    cells["rlhf_token_logprobs"] = na("the temperature division is inline in the actor")
    cells["rlhf_truncated_sampling_logprobs"] = na(
        "the temperature division is inline in the actor"
    )
    cells["rlhf_grpo_loss"] = na("the k3 term is added inline in the actor's update_policy")
    cells["rlhf_reinforce_pp_advantages"] = verl_reinforce_pp()
    return version, cells


def verl_reinforce_pp():
    """REINFORCE++ as verl's driver computes it with algorithm.use_kl_in_reward=True: the score
    on the last response token (where the reward manager writes it), ray_trainer.apply_kl_penalty
    (kl_penalty 'kl' = k1, a fixed β), then ray_trainer.compute_advantage with the
    reinforce_plus_plus estimator (core_algos.compute_reinforce_plus_plus_outcome_advantage),
    on a DataProto as the driver passes it."""
    import torch
    from omegaconf import OmegaConf
    from verl import DataProto
    from verl.trainer.ppo import core_algos, ray_trainer

    doc, bad = load("rlhf_reinforce_pp_advantages"), []
    for i, c in enumerate(doc["cases"]):
        x, want = c["inputs"], c["outputs"]
        mask = t64(x["mask"])
        B, L = mask.shape
        scores = torch.zeros(B, L, dtype=torch.float64)
        scores[torch.arange(B), mask.sum(1).long() - 1] = t64(x["scores"])
        prompt = torch.ones(B, 2, dtype=torch.long)
        data = DataProto.from_dict(
            tensors={
                "responses": torch.zeros(B, L, dtype=torch.long),
                "attention_mask": torch.cat([prompt, mask.long()], 1),
                "token_level_scores": scores,
                "old_log_probs": t64(x["logprobs"]),
                "ref_log_prob": t64(x["ref_logprobs"]),
            }
        )
        with quiet():
            data, _ = ray_trainer.apply_kl_penalty(
                data, core_algos.FixedKLController(x["beta"]), kl_penalty="kl"
            )
            data = ray_trainer.compute_advantage(
                data,
                core_algos.AdvantageEstimator.REINFORCE_PLUS_PLUS,
                gamma=x["gamma"],
                config=OmegaConf.create({"gamma": x["gamma"]}),
            )
        for key, name in (
            ("token_level_rewards", "rewards"),
            ("returns", "returns"),
            ("advantages", "advantages"),
        ):
            if not close(data.batch[key], want[name], doc["tolerance"]):
                bad.append(f"case {i} {name}")
    return verdict(
        not bad,
        "ray_trainer.apply_kl_penalty (use_kl_in_reward=True, kl_penalty 'kl', fixed β) + "
        "compute_advantage('reinforce_plus_plus'): returns whitened over the whole batch's "
        "response tokens (verl's default use_kl_in_reward=False leaves the KL out of r_t)",
        ", ".join(bad) + " differ",
    )


# ---------------------------------------------------------------- not callable / not installed


def cleanrl_cells():
    """CleanRL's PyPI package holds its single-file scripts as modules; try to import them."""
    errors = []
    for module in ("cleanrl.ppo", "cleanrl.ppo_continuous_action"):
        try:
            with quiet():
                __import__(module)
        except Exception as e:
            errors.append(f"{module}: {type(e).__name__}: {str(e).split(' (')[0]}")
    why = "single-file scripts whose GAE and losses run inline in the training loop"
    if errors:
        why += "; and their modules do not import here (" + "; ".join(errors) + ")"
    return importlib.metadata.version("cleanrl"), {"*": na(why)}


PEER_CELLS = {
    "Stable-Baselines3": sb3_cells,
    "sb3-contrib": sb3_contrib_cells,
    "TRL": trl_cells,
    "Tianshou": tianshou_cells,
    "verl": verl_cells,
    "CleanRL": cleanrl_cells,
}
NOT_INSTALLABLE = {  # peers that cannot be installed on a CPU-only machine, and why
    "OpenRLHF": "openrlhf 0.11.2 requires flash-attn 2.8.3 (a CUDA build), deepspeed 0.19.6 and "
    "transformers 5.15.0; its loss module imports deepspeed at import time",
}


def run(peers=None):
    """[(peer, version, {vector: (verdict, note)})] for every peer, and the seconds it took."""
    rows = []
    for name, dist, module in PEERS:
        if peers and name not in peers:
            continue
        start = time.perf_counter()
        try:
            with quiet():
                __import__(module)
        except Exception as e:  # not installed, or broken in this environment
            why = NOT_INSTALLABLE.get(name) or f"not installed here ({type(e).__name__}: {e})"
            rows.append((name, "-", {"*": na(why.splitlines()[0][:200])}, 0.0))
            continue
        if name not in PEER_CELLS:
            rows.append(
                (
                    name,
                    importlib.metadata.version(dist),
                    {"*": na(NOT_INSTALLABLE.get(name, "no runner"))},
                    0.0,
                )
            )
            continue
        version, cells = PEER_CELLS[name]()
        rows.append((name, version, cells, time.perf_counter() - start))
    return rows


def expand(cells):
    """Every vector's cell: those not named are n/a (the peer has no such piece)."""
    everything = cells.get("*")
    out = {}
    for v in vector_names():
        out[v] = cells.get(v) or everything or na("no such piece")
    return out


def counts(cells):
    full = expand(cells)
    return {k: sum(1 for v, _ in full.values() if v == k) for k in ("agrees", "differs", "n/a")}


def print_table(rows, markdown=False):
    if markdown:
        print("| peer | version | vector | verdict | detail |")
        print("|---|---|---|---|---|")
    for name, version, cells, seconds in rows:
        c = counts(cells)
        head = (
            f"{name} {version}: {c['agrees']} agree, {c['differs']} differ, {c['n/a']} n/a"
            f" ({seconds:.1f} s)"
        )
        if not markdown:
            print(head)
        named = {k: v for k, v in cells.items() if k != "*"}
        for vector in sorted(
            named, key=lambda k: ({"agrees": 0, "differs": 1}.get(named[k][0], 2), k)
        ):
            verdict_, note = named[vector]
            if markdown:
                cell = note.replace("|", "\\|")  # |ρ − 1| must not end the table cell
                print(f"| {name} | {version} | `{vector}` | {verdict_} | {cell} |")
            else:
                print(f"  {vector:34s} {verdict_:8s} {note}")
        rest = len(vector_names()) - len(named)
        label = f"the other {rest}" if named else f"all {rest}"
        if rest:
            note = cells["*"][1] if "*" in cells else "the peer has no such piece"
            if markdown:
                print(f"| {name} | {version} | {label} | n/a | {note} |")
            else:
                print(f"  {'(' + label + ' vectors)':34s} n/a      {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--peer", action="append", help="only this peer (repeatable)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    rows = run(args.peer)
    print(
        f"golden/ conformance, {len(vector_names())} vectors, Python "
        f"{sys.version.split()[0]}, numpy {np.__version__}, torch "
        f"{importlib.metadata.version('torch')}, {time.strftime('%Y-%m-%d')}"
    )
    print_table(rows, args.markdown)
    print(f"finished in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
