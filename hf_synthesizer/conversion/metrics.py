"""Evaluation metrics by name, as transformers' example scripts take them: through `evaluate.load(name_or_path)`
where its module can be loaded (the Hub when online, or a local metric script/folder), else the same computation
done here locally (numpy, scikit-learn, scipy), saying which ran. Used by `hf-synthesizer distill`'s task recipe and
the scripts in examples/.

    metric = load_metric("accuracy")            # evaluate's module when loadable, else the local one
    metric.compute(predictions=[0, 1], references=[1, 1])  -> {"accuracy": 0.5}
    metric.source                               # "evaluate: accuracy" or "local (numpy): accuracy"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)


def _accuracy(predictions, references, normalize=True, sample_weight=None):
    matches = np.asarray(predictions) == np.asarray(references)
    return {"accuracy": float(np.average(matches, weights=sample_weight) if normalize else matches.sum())}


def _f1(predictions, references, average="binary", **kwargs):
    from sklearn.metrics import f1_score

    return {"f1": float(f1_score(references, predictions, average=average, **kwargs))}


def _mse(predictions, references, squared=True):
    from sklearn.metrics import mean_squared_error

    mse = float(mean_squared_error(references, predictions))
    return {"mse": mse if squared else float(np.sqrt(mse))}


def _pearsonr(predictions, references):
    from scipy.stats import pearsonr

    return {"pearsonr": float(pearsonr(references, predictions).statistic)}


def _exact_match(predictions, references):
    same = np.asarray(predictions, dtype=object) == np.asarray(references, dtype=object)
    return {"exact_match": float(same.mean()) if len(same) else 0.0}


# The local computations of evaluate's metrics of the same names (same arguments and result keys).
LOCAL_METRICS: dict[str, tuple[Callable[..., dict], str]] = {
    "accuracy": (_accuracy, "numpy"),
    "f1": (_f1, "scikit-learn"),
    "mse": (_mse, "scikit-learn"),
    "pearsonr": (_pearsonr, "scipy"),
    "exact_match": (_exact_match, "numpy"),
}


@dataclass
class Metric:
    """A loaded metric: `compute(predictions=..., references=..., **kwargs) -> dict` and where it came from."""

    name: str
    compute: Callable[..., dict]
    source: str  # "evaluate: <name or path>" or "local (<library>): <name>"


def load_metric(name_or_path: str) -> Metric:
    """`evaluate.load(name_or_path)` (a Hub metric name, or the path of a local metric script or folder); when that
    fails (evaluate not installed, offline, no such module) the local computation of a metric of the same name.

    Logs which ran. Raises ValueError when neither exists, naming the local metrics and how to give a module."""
    name = name_or_path.rstrip("/").split("/")[-1].removesuffix(".py")
    try:
        import evaluate

        module = evaluate.load(name_or_path)
        metric = Metric(name, module.compute, f"evaluate: {name_or_path}")
    except Exception as e:  # ImportError, FileNotFoundError offline, ConnectionError ...: use the local computation
        if name not in LOCAL_METRICS:
            raise ValueError(
                f"Metric {name_or_path!r} could not be loaded with evaluate ({type(e).__name__}: {e}) and has no local "
                f"computation (local: {', '.join(LOCAL_METRICS)}). Pass the path of an evaluate metric script or "
                f"folder, or one of those names."
            ) from e
        function, library = LOCAL_METRICS[name]
        metric = Metric(name, function, f"local ({library}): {name}")
        logger.warning("Metric %s: computed locally with %s (evaluate.load(%r) failed: %s)", name, library,
                       name_or_path, type(e).__name__)
        return metric
    logger.info("Metric %s: evaluate.load(%r)", name, name_or_path)
    return metric
