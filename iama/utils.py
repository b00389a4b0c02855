"""Small shared helpers: checks of output paths before any work, atomic writes (nothing half-written survives a
crash) and a description of the machine."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import secrets
from pathlib import Path


def check_output_dir(path, what: str = "output folder") -> Path:
    """`path` as a folder that can be written, or one line (ValueError) naming `what`: it, or the nearest of its
    parents that exists, must be a folder with write permission. Called before any model loads, so that no work
    is lost to an output path that cannot take it."""
    if path is None or not str(path).strip():
        raise ValueError(f"{what} is empty: give a folder")
    path = Path(path).expanduser()
    for existing in (path, *path.parents):
        if existing.exists():
            if not existing.is_dir():
                where = "is" if existing == path else f"is inside {str(existing)!r}, which is"
                raise ValueError(f"{what} {str(path)!r} {where} an existing file, not a folder")
            if not os.access(existing, os.W_OK | os.X_OK):
                where = "" if existing == path else f" (its parent {str(existing)!r})"
                raise ValueError(f"{what} {str(path)!r} cannot be written: no write permission on the folder{where}")
            return path
    return path


def check_output_file(path, what: str = "output file") -> Path:
    """`path` as a file that can be written (atomically: a new file in its folder, renamed over it), or one line
    (ValueError) naming `what`."""
    if path is None or not str(path).strip():
        raise ValueError(f"{what} is empty: give a file")
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{what} {str(path)!r} is a folder, not a file")
    try:
        check_output_dir(path.parent, "its folder")
    except ValueError as e:
        raise ValueError(f"{what} {str(path)!r}: {e}") from None
    return path


def check_bootstrap(resamples: int, confidence: float = 0.95) -> None:
    """Enough bootstrap resamples for a percentile interval at `confidence`: each tail needs one, so at least
    2 / (1 - confidence) (40 at 95%); fewer give intervals of zero width or none. One line (ValueError)."""
    need = math.ceil(2 / (1 - confidence) - 1e-9)
    if resamples < need:
        raise ValueError(f"--bootstrap {resamples} is too few for {confidence:.0%} intervals: each tail needs a "
                         f"resample, so at least {need}")


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it over `path` (atomic on POSIX). The file gets the
    mode an ordinary write would (0666 less the umask), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _new_file(path: Path) -> tuple[int, str]:
    """A new, uniquely named file beside `path`, created with mode 0666 for the umask to restrict."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def recorded_command(script: str, argv) -> str:
    """The command a benchmark records with its results: `python SCRIPT ARGS`, without --out and --name (where
    the results went is no part of how they were measured)."""
    import shlex

    given = list(argv)
    for flag in ("--out", "--name"):
        while flag in given and given.index(flag) + 1 < len(given):
            i = given.index(flag)
            del given[i:i + 2]
        given = [a for a in given if not a.startswith(flag + "=")]
    return " ".join([f"python {script}", *map(shlex.quote, given)]).strip()


def atomic_write_csv(path, rows: list[dict]) -> Path:
    """Rows (dicts with the same keys) as a CSV file with a header, written atomically; benchmarks record so."""
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def atomic_write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path, obj, indent=2) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, default=_jsonable) + "\n")


def _jsonable(x):
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def json_safe(x):
    """x with numpy types made plain and NaN or infinity made None (JSON has neither)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (int, float, str)):  # numpy arrays and scalars
        return json_safe(x.tolist())
    if isinstance(x, float):
        return float(x) if math.isfinite(x) else None
    return x


def safe_name(label: str) -> str:
    """A model label made into a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "model"


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically as PNG and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def machine_info() -> dict:
    """What benchmarks record beside their numbers."""
    info = {"python": platform.python_version(), "platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info
