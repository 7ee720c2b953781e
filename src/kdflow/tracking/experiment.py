"""The MLflow experiment the runs go to: created by kdflow as a model-training experiment.

The kind (tag ``mlflow.experimentKind``) says what the experiment holds: training runs, not
GenAI traces. kdflow also records the artifact root it chose, so only a root kdflow created is
ever relocated. ``runs_page`` is where the UI shows the runs.
"""

from __future__ import annotations

import mlflow
from mlflow.exceptions import MlflowException

from kdflow.errors import KdflowError
from kdflow.tracking.store import CREATED_ROOT, artifact_location, call

KIND = "mlflow.experimentKind"
TRAINING = "custom_model_development"  # the UI's "machine learning" kind: opens on the runs


def experiment_id(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside a sqlite store) if missing."""
    exp = call(uri, "read the experiment", mlflow.get_experiment_by_name, name)
    if exp is None:
        loc = artifact_location(uri)
        tags = {KIND: TRAINING, **({CREATED_ROOT: loc} if loc else {})}
        try:
            return mlflow.create_experiment(name, loc, tags=tags)
        except MlflowException as exc:  # another stage created it meanwhile: use that one
            exp = call(uri, "read the experiment", mlflow.get_experiment_by_name, name)
            if exp is None:
                msg = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                raise KdflowError(
                    f"MLflow at {uri} failed to create experiment {name}: {msg}"
                ) from None
    return exp.experiment_id  # one kdflow did not create is used as it is, never re-tagged


def runs_page(uri: str, name: str) -> str:
    """The UI's address (after host:port) of the experiment's runs table. MLflow 3's UI picks
    its GenAI or model-training view from a browser setting (default GenAI), not from the
    experiment's kind, so the address says ``workflowType=machine_learning``."""
    view = "?workflowType=machine_learning"
    try:
        exp = mlflow.MlflowClient(uri).get_experiment_by_name(name)
    except MlflowException:
        exp = None
    return f"/#/experiments/{exp.experiment_id}/runs{view}" if exp else f"/#/experiments{view}"
