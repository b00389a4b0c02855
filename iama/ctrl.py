"""InfAlign-CTRL: calibrate rewards against the reference model, transform them, and plan the transform.

Calibrate: for each prompt keep the rewards of K reference samples; a new reward r maps to
C = (#{r_k < r} + 1/2 #{r_k = r}) / K, uniform on [0, 1] under the reference model for every prompt and reward.
Transform: KL-regularised RL then maximises E[Phi(C)] - beta KL with a transform Phi chosen for the decoding
algorithm (identity for sampling, exp(t u) for best-of-N, -exp(-t u) for worst-of-N, ...).
Plan: in the 1-D model of the calibrated reward the aligned policy has density p(u) ∝ exp(Phi(u) / beta) on
[0, 1]; that gives KL and the inference-time win rate in closed form, so the transform's parameter and beta can
be picked for a KL budget before any training, and compared with the optimal transform.

Over 500 lines because calibration, transforms and the planner share the calibrated reward's definition and
the 1-D model's quadrature; `iama calibrate` fills the store from here too.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre
from scipy.optimize import brentq, minimize_scalar

from .algorithms import BestOfN, Sampling, WorstOfN, parse_algorithm
from .data import prompt_key
from .transforms import TRANSFORM_HELP, Transform, _name, parse_transform  # noqa: F401 (iama.ctrl.parse_transform)
from .utils import atomic_write_json, check_output_dir, check_output_file, save_figure

# ---------------------------------------------------------------------------------------------------------------
# calibration


def calibrated_reward(reference_rewards, rewards) -> np.ndarray:
    """C = (#{k: r_k < r} + 1/2 #{k: r_k = r}) / K for each new reward r.

    reference_rewards (..., K): rewards of K reference samples per prompt; rewards (..., M): new rewards for the
    same prompts (leading axes broadcast). Returns (..., M) in [0, 1]. O((K + M) log K) per prompt."""
    ref = np.asarray(reference_rewards, dtype=np.float64)
    new = np.asarray(rewards, dtype=np.float64)
    if ref.ndim == 0 or ref.shape[-1] == 0:
        raise ValueError("reference_rewards needs at least one reference reward on its last axis")
    if new.ndim == 0:
        raise ValueError("rewards must have a last axis (the new rewards of a prompt); wrap a scalar in a list")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(new))):
        raise ValueError("rewards must be finite to calibrate (got NaN or inf)")
    lead = np.broadcast_shapes(ref.shape[:-1], new.shape[:-1])
    ref = np.sort(np.broadcast_to(ref, lead + ref.shape[-1:]).reshape(-1, ref.shape[-1]), axis=-1)
    flat = np.broadcast_to(new, lead + new.shape[-1:]).reshape(-1, new.shape[-1])
    out = np.empty_like(flat)
    for i, (r, x) in enumerate(zip(ref, flat)):
        # below = #{r_k < x}, below + equal = #{r_k <= x}
        out[i] = np.searchsorted(r, x, "left") + np.searchsorted(r, x, "right")
    return (out / (2 * ref.shape[-1])).reshape(lead + new.shape[-1:])


class CalibrationStore:
    """Reference rewards per reward name and prompt, kept in a JSON file {"rewards": {name: {prompt: [r, ...]}},
    "model": the reference model they were sampled from}; stores written before the model was recorded have none
    (model None).

    Open an existing file (or start empty) with CalibrationStore(path); save() writes it atomically."""

    def __init__(self, path=None):
        self.path = Path(path) if path is not None else None
        self.rewards: dict[str, dict[str, list[float]]] = {}
        self.model: str | None = None
        if self.path is not None and self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.rewards = {name: {p: [float(x) for x in r] for p, r in table.items()}
                                for name, table in data["rewards"].items()}
                self.model = data.get("model")
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                reason = f"no {e}" if isinstance(e, KeyError) else str(e).splitlines()[0]
                raise ValueError(f"calibration store {str(self.path)!r} is not one `iama calibrate` wrote "
                                 f"({reason}); move it away to calibrate again") from None

    @classmethod
    def load(cls, path) -> "CalibrationStore":
        """An existing store; a missing file is an error here (training needs the reference rewards)."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no calibration store at {path}; calibrate the training prompts first "
                                    "(`iama calibrate`, or iama.ctrl.fill)")
        return cls(path)

    def save(self, path=None) -> Path:
        path = Path(path) if path is not None else self.path
        if path is None:
            raise ValueError("this store has no file; pass a path to save()")
        return atomic_write_json(path, {"version": 1, **({"model": self.model} if self.model else {}),
                                        "rewards": self.rewards})

    def check_model(self, model) -> None:
        """Calibration is relative to one reference model: a store sampled from another model is an error. A store
        that does not record its model (written before stores did) cannot tell, and passes."""
        if model is not None and self.model is not None and str(model) != self.model:
            raise ValueError(f"calibration store {self.path} was sampled from model {self.model!r}, not "
                             f"{str(model)!r}; calibrate {str(model)!r} into another file")

    @property
    def reward_names(self) -> list[str]:
        return list(self.rewards)

    def add(self, prompt, reward_name: str, rewards):
        r = np.asarray(rewards, dtype=np.float64).ravel()
        if r.size == 0 or not np.all(np.isfinite(r)):
            raise ValueError(f"reference rewards for {reward_name!r} must be a non-empty list of finite numbers")
        self.rewards.setdefault(reward_name, {})[prompt_key(prompt)] = r.tolist()

    def missing(self, prompts, reward_names=None) -> list:
        """The prompts (deduplicated, in order) that lack reference rewards for any of reward_names
        (default: every reward name in the store; with an empty store, every prompt)."""
        names = self.reward_names if reward_names is None else list(reward_names)
        seen, out = set(), []
        for p in prompts:
            k = prompt_key(p)
            if k not in seen:
                seen.add(k)
                if not names or any(k not in self.rewards.get(n, {}) for n in names):
                    out.append(p)
        return out

    def lookup(self, prompts, reward_name: str, rewards) -> np.ndarray:
        """Calibrated values of rewards: rewards[i] (a number, or a row of M numbers) belongs to prompts[i]."""
        table = self.rewards.get(reward_name)
        if table is None:
            raise KeyError(f"no calibration for reward {reward_name!r}; the store has {self.reward_names}")
        r = np.asarray(rewards, dtype=np.float64)
        if r.ndim not in (1, 2) or len(r) != len(prompts):
            raise ValueError(f"rewards must be (len(prompts),) or (len(prompts), M); got {r.shape} "
                             f"for {len(prompts)} prompts")
        rows = r.reshape(len(r), -1)
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(prompts):
            groups.setdefault(prompt_key(p), []).append(i)
        out = np.empty_like(rows)
        for k, idx in groups.items():  # one searchsorted per distinct prompt
            if k not in table:
                raise KeyError(f"prompt was never calibrated for reward {reward_name!r}: {k[:200]!r}; "
                               "run fill() over the training prompts first")
            out[idx] = calibrated_reward(table[k], rows[idx].ravel()).reshape(len(idx), -1)
        return out.reshape(r.shape)


def calibrated_transformed_reward(reward_fn, store: CalibrationStore, reward_name: str, transform="identity"):
    """A TRL reward function scoring Phi(C(x, r(x, y))): reward_fn's rewards calibrated against the store's
    reference rewards for reward_name, then transformed. None or NaN rewards pass through for the caller's
    policy on invalid rewards. C = 0 (below every reference sample) is raised to 1/(2K), the value of a tie with
    the lowest one, so that log and u^p stay finite and keep their order everywhere else."""
    phi = parse_transform(transform)
    if reward_name not in store.rewards:
        raise KeyError(f"no calibration for reward {reward_name!r}; the store has {store.reward_names}")
    table = store.rewards[reward_name]

    def reward(prompts, completions, **kwargs):
        raw = reward_fn(prompts=prompts, completions=completions, **kwargs)
        out = list(raw)
        keep = [i for i, r in enumerate(raw) if r is not None and np.isfinite(r)]
        if keep:
            kept = [prompts[i] for i in keep]
            c = store.lookup(kept, reward_name, [raw[i] for i in keep])
            c = np.maximum(c, [0.5 / len(table[prompt_key(p)]) for p in kept])
            for i, v in zip(keep, np.asarray(phi(c), dtype=np.float64)):
                out[i] = float(v)
        return out

    reward.__name__ = reward_name  # TRL logs rewards by function name
    return reward


def fill(store_path, prompts, sample_fn, reward_fns: dict, k: int, batch_size: int = 8, progress=True, model=None):
    """Sample k reference completions for every prompt still missing from the store and keep their rewards.
    model: the reference model sample_fn draws from, recorded in a new store and checked against an existing one.

    sample_fn(prompts, k) -> for each prompt a list of k completions (strings, or {"text", "ids"} dicts whose
    ids reach the rewards as completion_ids, as in training); reward_fns maps a name to a TRL-style
    fn(prompts=..., completions=...) -> list[float]. The file is rewritten (atomically) after every batch, so a
    killed run resumes where it stopped. Returns the store."""
    from .pools import score_completions  # the one scoring path, as pools are scored

    if not reward_fns:
        raise ValueError("fill() needs at least one reward function")
    if int(k) != k or k < 1 or int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"k and batch_size must be positive integers, got k={k!r}, batch_size={batch_size!r}")
    store = CalibrationStore(store_path)
    store.check_model(model)
    if model is not None and not store.rewards:  # an old store's entries may be any model's: left unrecorded
        store.model = str(model)
    todo = store.missing(prompts, reward_fns)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="calibrating", unit="prompt", file=sys.stderr)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        completions = sample_fn(batch, k)
        if len(completions) != len(batch) or any(len(c) != k for c in completions):
            raise ValueError(f"sample_fn must return {k} completions for each of the {len(batch)} prompts")
        flat_prompts = [p for p in batch for _ in range(k)]
        flat_completions = [c for cs in completions for c in cs]
        extra = {}
        if flat_completions and isinstance(flat_completions[0], dict):  # {"text", "ids"}: score as TRL would
            extra["completion_ids"] = [c["ids"] for c in flat_completions]
            flat_completions = [c["text"] if isinstance(p, str) else [{"role": "assistant", "content": c["text"]}]
                                for p, c in zip(flat_prompts, flat_completions)]
        for name, fn in reward_fns.items():  # reward by reward: a store resumed with a new reward scores only it
            need = [i for i, p in enumerate(batch) if prompt_key(p) not in store.rewards.get(name, {})]
            if not need:
                continue
            scores = score_completions(flat_prompts, flat_completions, {name: fn}, **extra)[name]
            scores = np.asarray(scores, dtype=np.float64).reshape(len(batch), k)
            for i in need:
                store.add(batch[i], name, scores[i])
        store.save()
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return store


# ---------------------------------------------------------------------------------------------------------------
# the 1-D model: quadrature on [0, 1]
#
# Densities exp(Phi/beta) can be peaked within 1e-3 of u = 1 (small beta, large t) or have integrable
# singularities at 0 (log, u^p with p < 1), so we use Gauss-Legendre panels graded geometrically towards both
# ends plus uniform panels in between. Gauss nodes never touch 0 or 1 (log 0 is never evaluated). F at every
# node comes from a per-panel spectral integration matrix, exact for polynomials of the panel's degree.
# The finest panels (7e-12 wide) resolve densities up to KL ≈ 20, far beyond any budget used in practice.

_ORDER = 12
_EDGE = 0.5 ** np.arange(2, 38)  # distances 0.25 ... 7e-12 from each end
_BREAKS = np.unique(np.concatenate([[0.0, 1.0], _EDGE, 1 - _EDGE, np.linspace(0, 1, 65)]))


def _build_grid():
    x, w = legendre.leggauss(_ORDER)
    # S[i, j] = ∫_{-1}^{x_i} l_j, l_j the Lagrange basis on the nodes: l_j = sum_k C[k, j] P_k with C = V^{-1}
    ints = np.stack([legendre.legval(x, legendre.legint(np.eye(_ORDER)[k], lbnd=-1)) for k in range(_ORDER)], 1)
    s = ints @ np.linalg.inv(legendre.legvander(x, _ORDER - 1))
    lo, hi = _BREAKS[:-1, None], _BREAKS[1:, None]
    half = (hi - lo) / 2
    return (lo + half * (x + 1)), half * w, half, s  # nodes (P, n), weights (P, n), half-widths (P, 1), S


_U, _W, _HALF, _S = _build_grid()
U = _U.ravel()  # every quadrature node, increasing
_WEIGHTS = _W.ravel()


def _cumulative(f):
    """∫_0^u f at every node u, for f given at the nodes."""
    f = f.reshape(_U.shape)
    within = (f @ _S.T) * _HALF
    panels = np.sum(f * _W, axis=1)
    return (within + np.concatenate([[0.0], np.cumsum(panels)[:-1]])[:, None]).ravel()


def _phi_at_nodes(transform):
    phi = np.asarray(transform(U), dtype=np.float64)
    if phi.shape != U.shape:
        phi = np.broadcast_to(phi, U.shape).astype(np.float64)
    if np.any(np.isnan(phi) | (phi == np.inf)) or np.all(phi == -np.inf):
        raise ValueError(f"transform {_name(transform)} gives NaN, +inf or only -inf on (0, 1); it must be finite "
                         "(or -inf, where the aligned density is then 0)")
    return phi


def _density(logits):
    """Normalised density at the nodes for log-density logits (up to a constant), and KL(p || uniform)."""
    top = np.max(logits)  # logsumexp by hand: scipy's costs more than the rest of a tradeoff() call
    e = np.exp(logits - top)
    logp = logits - (top + np.log(np.dot(_WEIGHTS, e)))
    p = np.exp(logp)
    with np.errstate(invalid="ignore"):  # 0 * -inf where Phi = -inf
        kl = float(np.dot(_WEIGHTS, np.where(p > 0, p * logp, 0.0)))
    return p, max(kl, 0.0)


def _win_rate(p, algorithm):
    """Win rate of the aligned policy (density p on the nodes) over the reference under the algorithm."""
    if algorithm.n == 1:
        return float(np.sum(_WEIGHTS * U * p))
    n = algorithm.n
    F = np.clip(_cumulative(p), 0.0, 1.0)
    if isinstance(algorithm, BestOfN):
        return float(1 - n * np.sum(_WEIGHTS * U ** (n - 1) * F**n))
    return float(1 - n * np.sum(_WEIGHTS * (1 - U) ** (n - 1) * (1 - (1 - F) ** n)))


def _first_variation(p, algorithm):
    """dW/dp at the nodes (canonical constant: 0 at u = 1). Perturbing p by q (∫q = 0) moves F by Q = ∫_0^u q:
    best-of-N  W = 1 - N ∫ u^{N-1} F^N          -> dW = -N^2 ∫ u^{N-1} F^{N-1} Q du
               = ∫ q(v) [-N^2 ∫_v^1 u^{N-1} F^{N-1} du] dv;
    worst-of-N W = 1 - N ∫ (1-u)^{N-1} (1 - (1-F)^N) -> dW = -N^2 ∫ (1-u)^{N-1} (1-F)^{N-1} Q du
               = ∫ q(v) [-N^2 ∫_v^1 (1-u)^{N-1} (1-F)^{N-1} du] dv.
    Sampling (N = 1) gives u - 1 in both forms."""
    n = algorithm.n
    if n == 1:
        return U - 1
    F = np.clip(_cumulative(p), 0.0, 1.0)
    h = U ** (n - 1) * F ** (n - 1) if isinstance(algorithm, BestOfN) else (1 - U) ** (n - 1) * (1 - F) ** (n - 1)
    cum = _cumulative(h)
    return -(n**2) * (np.sum(_WEIGHTS * h) - cum)


def _check_algorithm(algorithm):
    algorithm = parse_algorithm(algorithm)
    if not isinstance(algorithm, (Sampling, BestOfN, WorstOfN)):
        raise ValueError(f"the CTRL planner knows Sampling, BestOfN and WorstOfN win rates; got {algorithm}")
    return algorithm


def _check_beta(beta):
    if not (np.isfinite(beta) and beta > 0):
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    return float(beta)


def tradeoff(transform, beta: float, algorithm=Sampling()) -> dict:
    """KL(p || uniform) and the win rate over the reference under `algorithm` of p(u) ∝ exp(Phi(u) / beta)."""
    algorithm = _check_algorithm(algorithm)
    p, kl = _density(_phi_at_nodes(parse_transform(transform)) / _check_beta(beta))
    return {"kl": kl, "win_rate": _win_rate(p, algorithm)}


def _kl_of_log_beta(phi):
    return lambda lb: _density(phi / np.exp(lb))[1]


def beta_for_kl(transform, kl: float, algorithm=None) -> float:
    """The beta at which the transform's aligned policy has KL(p || uniform) = kl. KL does not depend on the
    decoding algorithm; `algorithm` is accepted (and checked) only so calls can mirror tradeoff()."""
    if algorithm is not None:
        _check_algorithm(algorithm)
    if not (np.isfinite(kl) and kl > 0):
        raise ValueError(f"the KL budget must be a positive finite number, got {kl!r}")
    phi = _phi_at_nodes(parse_transform(transform))
    f = _kl_of_log_beta(phi)
    finite = phi[np.isfinite(phi)]
    scale = float(np.max(np.abs(finite)))
    spread = scale * float(np.std(finite / scale)) if scale > 0 else 0.0  # a start for the bracket, no overflow
    if spread == 0:
        raise ValueError(f"transform {_name(transform)} is constant: its KL is 0 at every beta")
    # KL falls monotonically in beta (d KL / d(1/beta) = Var(Phi) / beta > 0)
    log_beta, lowest = solve_log_beta(f, kl, np.log(spread))
    if log_beta is None:
        raise ValueError(f"KL budget {kl} is out of reach for transform {_name(transform)}: even as beta -> 0 "
                         f"its KL stays below {f(lowest):.4g}")
    return float(np.exp(log_beta))


def solve_log_beta(kl_at, kl: float, start: float, step: float = 2.0, tries: int = 200, xtol: float = 1e-12):
    """(log beta at which kl_at(log beta) = kl, the lowest log beta tried), for a KL that falls as beta grows:
    bracketed from `start` in steps of `step`, then solved (brentq). The first is None when the KL stays below
    `kl` even at the lowest beta tried: the budget is out of reach."""
    hi = lo = start
    for _ in range(tries):
        if kl_at(hi) < kl:
            break
        hi += step
    for _ in range(tries):
        if kl_at(lo) > kl:
            break
        lo -= step
    else:
        return None, lo
    return float(brentq(lambda lb: kl_at(lb) - kl, lo, hi, xtol=xtol, rtol=xtol)), lo


# ---------------------------------------------------------------------------------------------------------------
# the planner: the transform's parameter that wins most at a KL budget

# default parameter grids; exp:t overflows float64 beyond t ≈ 709
FAMILIES = {"exp": np.geomspace(0.1, 500, 61), "negexp": np.geomspace(0.1, 500, 61),
            "power": np.geomspace(0.05, 500, 61)}


def _json_list(x):
    """A list for JSON, None where a t could not reach the budget (NaN is not JSON)."""
    return [None if np.isnan(v) else float(v) for v in x]


def _at_budget(family, t, kl, algorithm):
    """(beta, win rate) of family:t at the KL budget; NaNs where the budget is out of its reach."""
    spec = f"{family}:{t:.17g}"
    try:
        beta = beta_for_kl(spec, kl)
    except ValueError:
        return np.nan, np.nan
    return beta, tradeoff(spec, beta, algorithm)["win_rate"]


def plan(algorithm, kl: float, family: str = "exp", ts=None) -> dict:
    """For each t of the family (exp:t, negexp:t or power:t) the beta with KL = kl and its win rate; the best t
    (the grid's best, refined by a bounded 1-D search between its neighbours)."""
    algorithm = _check_algorithm(algorithm)
    if not (np.isfinite(kl) and kl > 0):
        raise ValueError(f"the KL budget must be a positive finite number, got {kl!r}")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    ts = np.sort(np.asarray(FAMILIES[family] if ts is None else ts, dtype=np.float64))
    if ts.ndim != 1 or ts.size == 0 or not np.all(ts > 0):
        raise ValueError("ts must be a non-empty list of positive parameters")
    betas, wins = np.array([_at_budget(family, t, kl, algorithm) for t in ts]).T
    if np.all(np.isnan(wins)):
        raise ValueError(f"no {family}:t on the grid reaches KL {kl}")
    i = int(np.nanargmax(wins))
    best_t, best_beta, best_win = ts[i], betas[i], wins[i]
    if 0 < i < len(ts) - 1:  # refine in log t between the neighbours
        res = minimize_scalar(lambda lt: -np.nan_to_num(_at_budget(family, np.exp(lt), kl, algorithm)[1], nan=-1),
                              bounds=(np.log(ts[i - 1]), np.log(ts[i + 1])), method="bounded",
                              options={"xatol": 1e-6})
        if -res.fun > best_win:
            best_t = float(np.exp(res.x))
            best_beta, best_win = _at_budget(family, best_t, kl, algorithm)
    return {"algorithm": algorithm.spec, "kl": float(kl), "family": family, "ts": ts.tolist(),
            "betas": _json_list(betas), "win_rates": _json_list(wins), "best_t": float(best_t),
            "best_transform": f"{family}:{best_t:.6g}", "best_beta": float(best_beta),
            "best_win_rate": float(best_win), "at_grid_edge": i in (0, len(ts) - 1)}


# ---------------------------------------------------------------------------------------------------------------
# the optimal transform


@dataclass(eq=False)
class OptimalTransform:
    """The fixed point Phi = dW/dp[p_Phi] on the quadrature nodes; callable (linear interpolation), so it can be
    passed to tradeoff() or used as the CTRL transform."""

    u: np.ndarray = field(repr=False)
    phi: np.ndarray = field(repr=False)
    beta: float
    kl: float
    win_rate: float
    iterations: int
    converged: bool
    spec: str = "optimal"

    def __call__(self, u):
        return np.interp(np.asarray(u, dtype=np.float64), self.u, self.phi)


def optimal_transform(algorithm, beta: float, iters: int = 20000, damping=None, tol: float = 1e-10,
                      init=None) -> OptimalTransform:
    """Maximise W[p] - beta KL(p || uniform) over densities on [0, 1] by iterating
    Phi <- damping * Phi + (1 - damping) * dW/dp[p_Phi],  p_Phi ∝ exp(Phi / beta),
    until max |change| < tol. On log p this is mirror descent on the objective, with step eta where
    damping = 1 / (1 + eta beta); it converges linearly for best-of-N (W concave, METHOD §5). Worst-of-N's W is
    convex in p, so there only a stationary point is guaranteed (the tests compare it with the families).
    damping=None adapts the step: start undamped, halve it whenever two successive moves point against each
    other (an overshoot), regrow it slowly otherwise. A fixed damping that is always safe, 1/(1 + beta/L) with
    L = N(N-1)/4, needs ~L/beta iterations: thousands at small beta. `init`: an OptimalTransform to start from."""
    algorithm = _check_algorithm(algorithm)
    beta = _check_beta(beta)
    if damping is not None and not 0 <= damping < 1:
        raise ValueError(f"damping must be in [0, 1), got {damping!r}")
    step = 1.0 if damping is None else 1 - damping
    phi = (init.phi if isinstance(init, OptimalTransform) else U - 1).copy()
    converged, it, last = False, 0, np.zeros_like(U)
    for it in range(1, iters + 1):
        p, _ = _density(phi / beta)
        move = _first_variation(p, algorithm) - phi  # the fixed-point residual
        if np.max(np.abs(move)) < tol:
            converged = True
            break
        if damping is None:  # successive moves pointing against each other: we overshoot
            step = step / 2 if np.sum(_WEIGHTS * move * last) < 0 else min(1.0, step * 1.1)
        last = move
        phi = phi + step * move
    p, kl = _density(phi / beta)
    return OptimalTransform(U.copy(), phi, beta, kl, _win_rate(p, algorithm), it, converged)


def optimal_tradeoff(algorithm, kl: float, init=None) -> dict:
    """The best win rate any transform reaches at KL = kl: the optimal transform at the beta whose KL is the
    budget (root finding in log beta; each evaluation warm-starts from the previous fixed point).
    Returns {"kl", "win_rate", "beta", "transform": OptimalTransform}."""
    algorithm = _check_algorithm(algorithm)
    if not (np.isfinite(kl) and kl > 0):
        raise ValueError(f"the KL budget must be a positive finite number, got {kl!r}")
    last = [init]

    def excess(log_beta):
        last[0] = optimal_transform(algorithm, float(np.exp(log_beta)), init=last[0])
        if not last[0].converged:
            raise RuntimeError(f"the optimal transform for {algorithm} did not converge at beta={np.exp(log_beta)}")
        return last[0].kl - kl

    hi = lo = np.log(last[0].beta) if isinstance(init, OptimalTransform) else 0.0
    while excess(hi) > 0:  # the optimum's KL falls as beta grows
        hi += 1.5
    while excess(lo) < 0:
        lo -= 1.5
        if lo < -60:
            raise ValueError(f"KL budget {kl} is out of reach for {algorithm}'s optimal transform")
    brentq(excess, lo, hi, xtol=1e-10, rtol=1e-12)
    best = last[0]
    return {"kl": best.kl, "win_rate": best.win_rate, "beta": best.beta, "transform": best}


# ---------------------------------------------------------------------------------------------------------------
# the plan, plotted


def _default_family(algorithm):
    return "negexp" if isinstance(algorithm, WorstOfN) and algorithm.n > 1 else "exp"


def _curve(transform, kls, algorithm):
    wins = []
    for k in kls:
        try:
            wins.append(tradeoff(transform, beta_for_kl(transform, k), algorithm)["win_rate"])
        except ValueError:
            wins.append(None)  # out of this transform's reach
    return wins


def plot_plan(algorithm, out_dir, kl: float = 0.5, family=None, planned=None) -> dict:
    """Win rate against KL for the transform families and the optimal transform, with the planned transform
    marked at the budget. Writes ctrl_plan.png and ctrl_plan.json (the numbers) into out_dir; returns the latter.
    family: the planned family (default exp, negexp for worst-of-N); planned: a plan() result to reuse."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: renders with Agg, leaves the caller's backend alone

    algorithm = _check_algorithm(algorithm)
    family = family or _default_family(algorithm)
    planned = planned or plan(algorithm, kl, family)
    kls = np.linspace(0.02, max(2 * kl, 1.0), 25)
    specs = ["identity", "log", "exp:2", "exp:5", "exp:12", "exp:30", "negexp:2", "negexp:5", "negexp:12",
             "power:2", "power:8", planned["best_transform"]]
    curves = {s: {"kl": kls.tolist(), "win_rate": _curve(s, kls, algorithm)} for s in dict.fromkeys(specs)}
    opt_wins, prev = [], None
    for k in kls:
        prev = optimal_tradeoff(algorithm, k, init=prev and prev["transform"])
        opt_wins.append(prev["win_rate"])
    curves["optimal"] = {"kl": kls.tolist(), "win_rate": opt_wins}
    best = optimal_tradeoff(algorithm, kl, init=prev["transform"])

    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    colors = iter(c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (6, 7))  # red: the plan
    dashes = {"negexp": "--", "power": ":"}
    for spec, c in curves.items():
        if spec == "optimal":
            style = {"color": "black", "lw": 2.5}
        elif spec == planned["best_transform"]:
            style = {"color": "tab:red", "lw": 2}
        else:
            style = {"color": next(colors), "lw": 1.2, "ls": dashes.get(spec.partition(":")[0], "-")}
        ax.plot(c["kl"], np.array(c["win_rate"], dtype=float), label=spec, **style)
    ax.plot([kl], [planned["best_win_rate"]], "o", color="tab:red", ms=8,
            label=f"plan: {planned['best_transform']}, beta={planned['best_beta']:.3g}")
    ax.axvline(kl, color="grey", ls=":", lw=1)
    ax.set(xlabel="KL(aligned || reference)", ylabel=f"win rate under {algorithm.spec}",
           title=f"InfAlign-CTRL plan for {algorithm.spec} at KL {kl:g}")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    out_dir = Path(out_dir)
    record = {**planned, "optimal": {"kl": best["kl"], "win_rate": best["win_rate"], "beta": best["beta"]},
              "curves": curves, "files": {"plot": "ctrl_plan.png", "numbers": "ctrl_plan.json"}}
    save_figure(fig, out_dir / "ctrl_plan.png")
    atomic_write_json(out_dir / "ctrl_plan.json", record)
    return record


def ctrl_plan(algorithm, kl: float, out_dir, family=None) -> dict:
    """What `iama ctrl-plan --algorithm bon:4 --kl 0.5 --out DIR` runs: plan the transform for the algorithm at
    the KL budget, write DIR/ctrl_plan.json and DIR/ctrl_plan.png, return the plan with its curves."""
    algorithm = _check_algorithm(algorithm)
    check_output_dir(out_dir, "--out")
    family = family or _default_family(algorithm)
    return plot_plan(algorithm, out_dir, kl=kl, family=family, planned=plan(algorithm, kl, family))


def plan_summary(record) -> tuple[list[str], str | None]:
    """What `iama ctrl-plan` prints of a plan: the transform with its beta, the KL it reaches and its win rate
    beside the optimal transform's; and a warning when the best t is at the edge of the family's grid."""
    reached = tradeoff(record["best_transform"], record["best_beta"], record["algorithm"])["kl"]
    lines = [f"InfAlign-CTRL plan for {record['algorithm']} at KL {record['kl']:g}: transform "
             f"{record['best_transform']}, beta {record['best_beta']:.4g} (KL reached {reached:.4g})",
             f"win rate over the reference under {record['algorithm']}: {record['best_win_rate']:.4f} (the optimal "
             f"transform's: {record['optimal']['win_rate']:.4f})"]
    warning = None
    if record["at_grid_edge"]:
        warning = (f"the best {record['family']}:t is at the edge of its grid ({record['ts'][0]:g} to "
                   f"{record['ts'][-1]:g}): a t beyond it, or another --family, may win more")
    return lines, warning


def calibrate(cfg, k: int = 32, batch_size: int = 8, seed: int = 0, progress: bool = True) -> "CalibrationStore":
    """`iama calibrate`: for every training prompt of `cfg`, K samples from its model (the reference policy),
    scored by each calibrated criterion's reward and kept in the store at cfg.calibration. Prompts are keyed as
    the trainer will see them (conversations for a chat model), lengths count the EOS as TRL does. Resumable."""
    from .data import as_conversation, load_prompts
    from .backends import GenerationSettings, HFBackend
    from .models import resolve_model
    from .rewards import build_reward

    criteria = [c for c in cfg.criteria if c.calibrated]
    if not criteria:
        raise ValueError("no criterion has calibrated: true; there is nothing to calibrate")
    if not cfg.calibration:
        raise ValueError("set `calibration:` to the store's path (a JSON file)")
    for value, what in ((k, "--k"), (batch_size, "--batch-size")):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
    check_output_file(cfg.calibration, "calibration store")
    # a store it cannot read, or one of another model, stops here, before the model loads
    CalibrationStore(cfg.calibration).check_model(cfg.model)
    backend = HFBackend(resolve_model(cfg.model))
    prompts = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.prompt_split, limit=cfg.max_prompts)
    prompts = as_conversation(prompts, backend.tokenizer)
    settings = GenerationSettings.from_run_config(cfg)
    rewards = {c.name: build_reward(c.reward, tokenizer=backend.tokenizer) for c in criteria}
    done = iter(range(10**9))

    def sample(batch, n):
        return backend.generate(batch, n, settings, seed=seed + next(done))

    return fill(cfg.calibration, prompts, sample, rewards, k, batch_size=batch_size, progress=progress,
                model=cfg.model)
