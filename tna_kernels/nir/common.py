"""What the NIR exporter and importer share: the lazy import of ``nir``, the error type, metadata keys, threshold
conversions."""
import math

import numpy as np

# node and graph metadata written by to_nir under this key (a dict); other tools ignore it
META_KEY = "tna_kernels"
# graph metadata: how a neuron fires ("v >= v_threshold" is ours and SpikingJelly's; NIR's own is ">")
FIRES_AT_OR_ABOVE, FIRES_ABOVE = ">=", ">"


class NIRError(ValueError):
    """A network or graph that NIR, or this package's NIR support, cannot hold; the message names the module or
    node."""


def require_nir():
    """The ``nir`` package, or an ImportError that says how to install it."""
    try:
        import nir
    except ImportError as error:
        raise ImportError(
            f"tna_kernels.nir needs the nir package ({error}): pip install \"tna-kernels[nir]\" (or: pip install nir)"
        ) from error
    return nir


def check_dt(dt) -> float:
    """``dt`` as a positive finite float, else a ValueError."""
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or not dt > 0:
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    return float(dt)


def step_below(values: np.ndarray) -> np.ndarray:
    """float64 copy of ``values`` moved one float32 step down: ``h >= theta`` equals ``h > step_below(theta)`` for
    float32 ``h`` (``theta`` first rounded to float32, as the kernels do)."""
    return np.nextafter(np.asarray(values, np.float32), np.float32(-np.inf)).astype(np.float64)


def step_above(values: np.ndarray) -> np.ndarray:
    """float64 array of the smallest float32 strictly above each of ``values``: ``h > theta`` equals ``h >=
    step_above(theta)`` for float32 ``h``."""
    values = np.asarray(values, np.float64)
    rounded = values.astype(np.float32)
    above = np.where(rounded > values, rounded, np.nextafter(rounded, np.float32(np.inf)))
    return above.astype(np.float64)


def dense_groups(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv weight ``[O, C / groups, kh, kw]`` as the dense block-diagonal ``[O, C, kh, kw]``."""
    out, per_group = weight.shape[:2]
    dense = np.zeros((out, per_group * groups, *weight.shape[2:]), weight.dtype)
    rows = out // groups
    for group in range(groups):
        dense[group * rows:(group + 1) * rows, group * per_group:(group + 1) * per_group] = \
            weight[group * rows:(group + 1) * rows]
    return dense


def plain(value):
    """Metadata as read back from a file (numpy scalars, bytes) as Python values; arrays stay arrays."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, bytes):
        return value.decode("utf8")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SO":
        return [plain(item) for item in value.tolist()]
    return value
