"""InfAlign-CTRL's transforms Phi of the calibrated reward u in [0, 1]: what KL-regularised RL then maximises."""

from __future__ import annotations

import numpy as np


TRANSFORM_HELP = "identity, log, exp:T, negexp:T, power:P (T, P > 0), or a callable u -> Phi(u)"


class Transform:
    """A named u -> Phi(u) on numpy arrays (the name goes into plans and plots)."""

    def __init__(self, spec: str, fn):
        self.spec, self.fn = spec, fn

    def __call__(self, u):
        return self.fn(np.asarray(u, dtype=np.float64))

    def __repr__(self):
        return f"Transform({self.spec!r})"


def parse_transform(spec):
    """'identity', 'log', 'exp:t' (exp(t u)), 'negexp:t' (-exp(-t u)), 'power:p' (u^p); a callable is returned as
    is. No rescaling: exp:t ranges up to e^t, so the beta for a given KL grows like e^t (METHOD §6)."""
    if callable(spec):
        return spec
    text = str(spec).strip().lower()
    name, _, arg = text.partition(":")
    if name in ("identity", "log") and not arg:
        return Transform(name, (lambda u: u) if name == "identity" else np.log)
    if name in ("exp", "negexp", "power") and arg:
        try:
            a = float(arg)
        except ValueError:
            a = float("nan")
        if np.isfinite(a) and a > 0:
            fns = {"exp": lambda u: np.exp(a * u), "negexp": lambda u: -np.exp(-a * u), "power": lambda u: u**a}
            return Transform(f"{name}:{a:g}", fns[name])
    raise ValueError(f"bad transform {spec!r}; allowed: {TRANSFORM_HELP}")


def _name(transform):
    return getattr(transform, "spec", None) or getattr(transform, "__name__", None) or repr(transform)
