"""The models one server serves: one ModelManager per ModelConfig of --model_config_file (or the one
model of --model_name/--model_base_path), routed by ModelSpec.name.

Same request interface as ModelManager (lease, statuses, serves, is_available), so the
servicers do not care how many models there are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from model_builder.serve.model_config import ModelEntry
from model_builder.serve.models import LoadedVersion, ModelManager, StartupError, VersionStatus


class ModelSet:
    """ModelManagers by model name; requests for an unknown name get the first manager's NOT_FOUND."""

    def __init__(self, managers: list[ModelManager], labels: dict[str, tuple[tuple[str, int], ...]] | None = None):
        if not managers:
            raise ValueError("a server needs at least one model")
        self._managers = {m.name: m for m in managers}
        self._first = managers[0]
        # version_labels of the config file, checked once the first loads are done (server_core.cc).
        self._config_labels = dict(labels or {})

    @property
    def names(self) -> list[str]:
        """The served model names, in config order."""
        return list(self._managers)

    def _of(self, model_name: str) -> ModelManager:
        # An unknown name reaches a manager whose name differs: it raises TF Serving's NOT_FOUND text.
        return self._managers.get(model_name, self._first)

    def load_first(self, poll_seconds: float) -> None:
        """Loads every model's aspired versions (StartupError if one model's highest failed), then checks labels.

        server_core.cc UpdateModelVersionLabelMap, run after WaitUntilModelsAvailable: a label naming
        a version that is not AVAILABLE is FAILED_PRECONDITION, and the server does not start.
        """
        for manager in self._managers.values():
            manager.load_first(poll_seconds)
        for name, labels in self._config_labels.items():
            available = {s.version for s in self._managers[name].statuses(name) if s.state.name == "AVAILABLE"}
            for _label, version in labels:
                if version not in available:
                    raise StartupError(
                        f"Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version "
                        f"{version} of model {name}, which is not currently available for inference"
                    )

    def start(self, poll_seconds: float) -> None:
        """Starts every model's version polling."""
        for manager in self._managers.values():
            manager.start(poll_seconds)

    def stop(self) -> None:
        """Stops every model's version polling."""
        for manager in self._managers.values():
            manager.stop()

    @contextlib.contextmanager
    def lease(self, model_name: str, version: int | None = None, label: str | None = None) -> Iterator[LoadedVersion]:
        """ModelManager.lease of the named model."""
        with self._of(model_name).lease(model_name, version, label) as loaded:
            yield loaded

    def statuses(self, model_name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """ModelManager.statuses of the named model."""
        return self._of(model_name).statuses(model_name, version, label)

    def serves(self, model_name: str) -> bool:
        """True when `model_name` is one of the served models."""
        return model_name in self._managers

    def is_available(self) -> bool:
        """True when every model has a version serving."""
        return all(m.is_available() for m in self._managers.values())


def entries_labels(entries: tuple[ModelEntry, ...]) -> dict[str, tuple[tuple[str, int], ...]]:
    """The config-file labels to check at start, by model name."""
    return {e.name: e.labels for e in entries if e.labels}
