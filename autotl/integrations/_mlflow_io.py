"""MLflow's plumbing for :mod:`autotl.integrations.mlflow`: a client that answers now, MLflow quiet and pointed at a
URI only for a block, flat tags, and the Keras model logged with a signature and an input example.

Nothing here knows a study; :mod:`autotl.integrations.mlflow` does.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotl._extras import require
from autotl.errors import UsageError, first_line

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient


def require_mlflow() -> None:
    """One line naming the ``autotl[mlflow]`` extra when MLflow or optuna-integration is missing."""
    require("mlflow", "logging to MLflow")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """MLflow without its chatter: no run URLs on stdout, no INFO lines, no warnings (MLflowCallback's
    deprecation among them); autotl says what was logged."""
    import logging

    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        with _environ(MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT="true"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def quietly(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` run inside :func:`_quiet`."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _quiet():
            return method(*args, **kwargs)

    return wrapper


@contextlib.contextmanager
def fluent(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for the block, then back to what it was: the URI the user set
    (``set_tracking_uri`` mirrors it in ``$MLFLOW_TRACKING_URI``), or none, so MLflow's default stays a default."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None unsets it


def check_server(uri: str) -> None:
    """Before a search or an export that logs: the extra is installed and the server answers, or one line."""
    client_for(uri)


def client_for(uri: str) -> MlflowClient:
    """A client on ``uri`` that answers now: a server that is down is one line, not minutes of retries."""
    require_mlflow()
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(uri)
    try:
        with _environ(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10"):
            client.search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        raise UsageError(
            f"cannot reach the MLflow tracking server at {uri} ({first_line(exc)[:200]}); "
            "start it (mlflow server) or pass another URI"
        ) from None
    return client


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Environment variables set for the block, then as they were."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def flat(prefix: str, value: Any) -> dict[str, str]:
    """A nested dict as ``{"prefix.a.b": "value"}`` (MLflow params and tags are flat strings)."""
    if isinstance(value, Mapping):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flat(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)[:5000]}


def _signature(model: Any) -> Any:
    """uint8 images of any size in (``[-1, -1, -1, 3]``), float32 probabilities out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    classes = int(model.output_shape[-1])
    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype("uint8"), (-1, -1, -1, 3), "image")]),
        outputs=Schema([TensorSpec(np.dtype("float32"), (-1, classes), "probabilities")]),
    )


class _KerasFlavour:
    """``mlflow.keras`` for ``Model.log``, with the folder made first: MLflow's Keras ``save_model`` writes the
    input example before it creates the folder (mlflow/mlflow#16183, open), so ``mlflow.keras.log_model``
    with an input example fails."""

    __name__ = "mlflow.keras"

    @staticmethod
    def save_model(path: str, mlflow_model: Any = None, **kwargs: Any) -> Any:
        import mlflow.keras

        os.makedirs(path, exist_ok=True)
        return mlflow.keras.save_model(path=path, mlflow_model=mlflow_model, **kwargs)


def log_keras(uri: str, run_id: str, path: Path, name: str) -> str:
    """``path`` (a .keras file) logged in ``run_id`` with MLflow's Keras flavour and registered as ``name``."""
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf

    from autotl.export._common import _input_size

    model = keras.saving.load_model(path, safe_mode=True)
    h, w = _input_size(model)
    interactive = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()  # MLflow runs the input example: no progress bar
    example = np.full((1, h, w, 3), 128, np.uint8)
    requirements = [f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"]
    with fluent(uri), mlflow.start_run(run_id=run_id), contextlib.redirect_stderr(io.StringIO()):
        info = mlflow.models.Model.log(  # stderr: MLflow's "Successfully registered model" notes
            None, name="best_model", flavor=_KerasFlavour, model=model, signature=_signature(model),
            input_example=example, registered_model_name=name, pip_requirements=requirements,
        )  # fmt: skip
    if interactive:
        keras.config.enable_interactive_logging()
    return str(info.registered_model_version)


def lineage_tags(storage_url: str, path: Path, best: optuna.trial.FrozenTrial) -> dict[str, str]:
    """The model file's lineage record (what ``autotl lineage`` prints) as flat ``autotl.*`` tags."""
    from autotl.run.lineage import find_model

    try:
        record = find_model(storage_url, path) or {}
    except Exception:  # lineage is best effort; the trial's own record is still there
        record = {}
    keep = {
        k: v for k, v in record.items() if k not in ("same_bytes", "members", "path", "artifact_id")
    }
    if not keep:
        keep = {"trial_number": best.number, "params": best.params}
    return {k: v for k, v in flat("autotl", keep).items() if v not in ("None", "")}
