"""Model versions on disk -> loaded, warmed, served, swapped. Serves no RPC itself: its errors (serve/errors.py)
carry the gRPC status TF Serving answers with, and the servicers send them.

Mirrors TF Serving's defaults: the "latest" version policy (serve the highest
numbered folder; --model_config_file may set latest N, all or specific, see
serve/model_config.py), availability-preserving swaps (load and warm the new version,
then unload the old one), warmup replay before AVAILABLE, a failed load retried
--max_num_load_retries times every --load_retry_interval_micros
(core/loader_harness.cc, util/retrier.cc), and a failed load of a later version
leaves the previous version serving with the error reported in the status. The
first load is awaited before the server opens its ports, and if it fails the
server does not start (model_servers/server_core.cc WaitUntilModelsAvailable).
A request leases one version for its whole run, so it is answered by exactly
one complete version even while a swap happens.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from model_builder.compat.tfs_batching import BatchingParameters
from model_builder.serve.batching import BatchingSession, Feeds, RunCounter, TensorSignature
from model_builder.serve.errors import InvalidInputError, NotFoundError, clean_message
from model_builder.serve.model_config import VersionPolicy
from model_builder.serve.scheduler import SharedBatchScheduler
from model_builder.serve.session import SessionRunner

log = logging.getLogger("model_builder.serve")
# An unloading version waits at most this long for its in-flight requests.
_DRAIN_SECONDS = 30.0


class State(enum.IntEnum):
    """ModelVersionStatus.State values of tensorflow_serving/apis/get_model_status.proto."""

    UNKNOWN = 0
    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclass
class VersionStatus:
    """Lifecycle of one version as GetModelStatus reports it."""

    version: int
    state: State
    error_code: str = "OK"
    error_message: str = ""


@dataclass
class LoadedVersion:
    """A loaded SavedModel: a TF1 Session over its MetaGraph, its SignatureDefs, and how runs reach it.

    Requests run as TF Serving runs them (predict_util.cc): Session::Run fed and
    fetched by the signature's tensor names -- through the batching session when
    batching is on. Not tf.saved_model.load + eager signature calls: every call that
    fails inside the graph leaks ~1 KiB in TF's eager runtime, the Session path does not.
    """

    version: int
    path: Path
    session: object
    signature_defs: dict
    runner: SessionRunner
    batching: BatchingSession | None = None
    in_flight: int = 0
    lock: threading.Condition = field(default_factory=threading.Condition)

    def session_run(self, feeds: Feeds, fetches: list[str], deadline: float | None = None) -> list:
        """Session::Run by tensor names (batched with concurrent runs when batching is on)."""
        if self.batching is not None:
            return self.batching.run(feeds, fetches, deadline)
        return self.runner(feeds, fetches)

    def run(self, signature: str, inputs: dict, outputs: list[str]) -> dict:
        """Runs `signature` on numpy inputs keyed by alias; returns the requested outputs by alias."""
        sig = self.signature_defs[signature]
        values = self.session_run(
            [(sig.inputs[name].name, value) for name, value in inputs.items()],
            [sig.outputs[alias].name for alias in outputs],
        )
        return dict(zip(outputs, values))

    def close(self) -> None:
        """Drains the batching queues, then releases the session (and with it the ScaNN searcher and variables)."""
        if self.batching is not None:
            self.batching.close(timeout=_DRAIN_SECONDS)
        self.runner.close()
        self.session.close()


@dataclass(frozen=True)
class Batching:
    """--enable_batching: the parsed parameters and the server's one batch scheduler (shared by all versions)."""

    params: BatchingParameters
    scheduler: SharedBatchScheduler
    run_count: RunCounter = field(default_factory=RunCounter)


def load_version(
    path: Path, version: int, warmup: bool, batching: Batching | None = None, warmup_iterations: int = 1
) -> LoadedVersion:
    """Loads a version folder (after registering ScaNN's ops), wraps it for batching, replays its warmup file."""
    import tensorflow as tf

    import model_builder.scann_import  # noqa: F401  (Scann ops must be registered before loading)
    from model_builder.serve.predictor import replay_warmup

    # The thread counts set from --tensorflow_{intra,inter}_op_parallelism (server._configure_threads).
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        inter_op_parallelism_threads=tf.config.threading.get_inter_op_parallelism_threads(),
    )
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=config)
    loaded = None
    try:
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], str(path))
        defs = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
        runner = SessionRunner(session, graph)
        wrapped = None
        if batching is not None:
            # WrapSessionForBatching: one queue per signature of the MetaGraph (bundle_factory_util.cc).
            signatures = [
                TensorSignature.of([t.name for t in d.inputs.values()], [t.name for t in d.outputs.values()])
                for d in meta.signature_def.values()
            ]
            wrapped = BatchingSession(batching.params, batching.scheduler, runner, signatures, batching.run_count)
        loaded = LoadedVersion(version, path, session, defs, runner, wrapped)
        if warmup:
            replay_warmup(loaded, path, warmup_iterations)
    except BaseException:
        if loaded is not None:
            loaded.close()
        else:
            session.close()
        raise
    return loaded


class StartupError(Exception):
    """The first load failed: TF Serving exits instead of serving nothing."""


@dataclass(frozen=True)
class LoadRetries:
    """--max_num_load_retries / --load_retry_interval_micros (TF Serving's defaults: 5, one minute)."""

    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60_000_000

    def run(self, description: str, load, stop: threading.Event):
        """util/retrier.cc Retry: one try plus up to max_num_load_retries more, waiting between tries."""
        for attempt in range(max(0, self.max_num_load_retries) + 1):
            if attempt and (stop.wait(max(0, self.load_retry_interval_micros) / 1e6) or stop.is_set()):
                break
            try:
                return load()
            except Exception as err:
                log.error("%s failed: %s", description, clean_message(str(err))[:500])
                if attempt == max(0, self.max_num_load_retries):
                    raise
                log.info("Retrying of %s retry: %d", description, attempt + 1)
        raise RuntimeError(f"{description} was cancelled")


def _fingerprint(path: Path) -> tuple:
    try:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in path.iterdir()))
    except OSError:
        return ()


class ModelManager:
    """Owns the versions of one model under its base path."""

    def __init__(
        self,
        name: str,
        base_path: Path,
        *,
        warmup: bool = True,
        labels: dict[str, int] | None = None,
        batching: Batching | None = None,
        load_retries: LoadRetries | None = None,
        warmup_iterations: int = 1,
        policy: VersionPolicy | None = None,
    ) -> None:
        self.name = name
        self.policy = policy or VersionPolicy()
        self.base_path = base_path
        self._warmup = warmup
        self._batching = batching
        self._retries = load_retries or LoadRetries()
        self._warmup_iterations = warmup_iterations
        self._labels = dict(labels or {})
        self._lock = threading.Lock()
        self._serving: dict[int, LoadedVersion] = {}
        self._status: dict[int, VersionStatus] = {}
        # Failed versions are retried only when their folder changes (fixed in place).
        self._failed: dict[int, tuple] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------
    def load_first(self, poll_seconds: float) -> None:
        """Blocks until an aspired version is on disk and loads the aspired ones, highest first;
        raises StartupError if the highest failed.

        TF Serving's ServerCore::Create waits for the aspired version (the highest) to become
        AVAILABLE or fail (server_core.cc WaitUntilModelsAvailable: ServableRequest::Latest);
        there is no falling back to an older version at startup. The other aspired versions
        (latest N, all, specific) load too; one that fails is reported in its status.
        """
        while not self.policy.aspired(self.disk_versions()):
            if self._stop.wait(max(poll_seconds, 1.0)):
                return
        aspired = self.policy.aspired(self.disk_versions())
        version = aspired[-1]
        for older in reversed(aspired[:-1]):
            self._load(older)
        if self._load(version) is None:
            status = self._status[version]
            raise StartupError(
                f"Failed to start server. Error: UNKNOWN: 1 model(s) did not become available: "
                f"{{{{name: {self.name} version: {version}}} due to error: {status.error_message}}}, }}"
            )

    def start(self, poll_seconds: float) -> None:
        """Keeps polling for new versions (a poll wait <= 0 reads the base path once: nothing more to do)."""
        if poll_seconds <= 0:
            return
        self._thread = threading.Thread(
            target=self._poll_loop, args=(poll_seconds,), name="version-poller", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stops polling (loaded versions stay until the process exits)."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=60)

    def _poll_loop(self, poll_seconds: float) -> None:
        while not self._stop.wait(max(poll_seconds, 0.05)):
            try:
                self.poll_once()
            except Exception:
                log.exception("polling %s failed; retrying", self.base_path)

    def disk_versions(self) -> list[int]:
        """Numeric version folders present on disk (others, like build temp folders, are ignored)."""
        if not self.base_path.is_dir():
            return []
        return sorted(int(p.name) for p in self.base_path.iterdir() if p.name.isdigit() and p.is_dir())

    def poll_once(self) -> None:
        """One reconciliation step: serve the aspired versions (the policy over the loadable versions on disk).

        Availability-preserving, as TF Serving's default AvailabilityPreservingPolicy
        (core/availability_preserving_policy.cc): new aspired versions load first, and a version
        no longer aspired unloads only once an aspired one serves (or its folder is gone).
        """
        on_disk = self.disk_versions()
        candidates = [v for v in on_disk if self._failed.get(v) != _fingerprint(self.base_path / str(v))]
        aspired = self.policy.aspired(candidates)
        with self._lock:
            current = set(self._serving)
        for version in reversed(aspired):
            if version not in current and self._load(version) is None:
                return  # keep serving what we have; the next poll aspires without the failed version
        with self._lock:
            ready = any(v in self._serving for v in aspired)
            stale = [v for v in self._serving if v not in aspired and (ready or v not in on_disk)]
        for version in stale:
            self._unload(version)

    def _set(self, version: int, state: State, code: str = "OK", message: str = "") -> None:
        with self._lock:
            self._status[version] = VersionStatus(version, state, code, message)

    def _load(self, version: int) -> LoadedVersion | None:
        path = self.base_path / str(version)
        self._set(version, State.LOADING)
        log.info("loading %s version %d from %s", self.name, version, path)
        started = time.perf_counter()
        try:
            loaded = self._retries.run(
                f"Loading servable: {{name: {self.name} version: {version}}}",
                lambda: load_version(path, version, self._warmup, self._batching, self._warmup_iterations),
                self._stop,
            )
        except Exception as err:
            message = clean_message(str(err))[:500] or type(err).__name__
            log.error(
                "version %d of %s failed to load; previous version keeps serving: %s", version, self.name, message
            )
            self._failed[version] = _fingerprint(path)
            self._set(version, State.END, "UNKNOWN", f"failed to load version {version}: {message}")
            return None
        with self._lock:
            self._serving[version] = loaded
        self._set(version, State.AVAILABLE)
        log.info("version %d of %s AVAILABLE (load + warmup %.1f s)", version, self.name, time.perf_counter() - started)
        return loaded

    def _unload(self, version: int) -> None:
        with self._lock:
            loaded = self._serving.pop(version, None)
        if loaded is None:
            return
        self._set(version, State.UNLOADING)
        with loaded.lock:
            drained = loaded.lock.wait_for(lambda held=loaded: held.in_flight == 0, timeout=_DRAIN_SECONDS)
        if drained:  # else a straggler still holds it; TF closes the session when the last reference goes
            loaded.close()
        del loaded
        gc.collect()
        self._set(version, State.END)
        log.info("version %d of %s unloaded", version, self.name)

    # -- requests ------------------------------------------------------------
    def resolve(self, version: int | None, label: str | None) -> int | None:
        """Turns a version label into a number (TF Serving: unknown label is INVALID_ARGUMENT)."""
        if label:
            if label not in self._labels:
                raise InvalidInputError(f"Unrecognized servable version label: {label}")
            return self._labels[label]
        return version

    @contextlib.contextmanager
    def lease(self, model_name: str, version: int | None = None, label: str | None = None) -> Iterator[LoadedVersion]:
        """Holds one version for the duration of a request; unloading waits for it."""
        if model_name != self.name:
            raise NotFoundError(f"Servable not found for request: Latest({model_name})")
        wanted = self.resolve(version, label)
        with self._lock:
            if wanted is None:
                if not self._serving:
                    raise NotFoundError(f"Servable not found for request: Latest({model_name})")
                loaded = self._serving[max(self._serving)]
            else:
                loaded = self._serving.get(wanted)
                if loaded is None:
                    raise NotFoundError(f"Servable not found for request: Specific({model_name}, {wanted})")
            with loaded.lock:
                loaded.in_flight += 1
        try:
            yield loaded
        finally:
            with loaded.lock:
                loaded.in_flight -= 1
                loaded.lock.notify_all()

    def statuses(self, model_name: str, version: int | None = None, label: str | None = None) -> list[VersionStatus]:
        """Status of every version seen (or one), like GetModelStatus."""
        if model_name != self.name:
            raise NotFoundError(f"Could not find any versions of model {model_name}")
        wanted = self.resolve(version, label)
        with self._lock:
            found = [VersionStatus(**vars(s)) for v, s in sorted(self._status.items()) if wanted is None or v == wanted]
        if not found:
            if wanted is None:
                raise NotFoundError(f"Could not find any versions of model {model_name}")
            raise NotFoundError(f"Could not find version {wanted} of model {model_name}")
        return found

    def serves(self, model_name: str) -> bool:
        """True when `model_name` is this model."""
        return model_name == self.name

    def is_available(self) -> bool:
        """True when at least one version serves."""
        with self._lock:
            return bool(self._serving)
