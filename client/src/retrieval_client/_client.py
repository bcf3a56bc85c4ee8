"""The blocking client: runs the shared flows with blocking gRPC calls."""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import grpc

from . import _flows
from ._base import DEFAULT_WAIT_TIMEOUT_S, _ClientBase
from ._errors import RetrievalError, from_rpc_error
from ._requests import RESPONSE_TYPES
from ._types import Examples, Ids, ModelMetadata, SearchResult, Vectors, VersionStatus


class RetrievalClient(_ClientBase):
    """Blocking client for a ScaNN retrieval model served by TF Serving.

    Thread-safe; create one per process and share it. Use as a context
    manager or call close(). See _ClientBase.__init__ for the arguments.
    """

    _calls: Dict[str, Callable[..., Any]]

    def _callables(self) -> Dict[str, Callable[..., Any]]:
        self._check_open()
        if self._channel is None:
            with self._lock:
                if self._channel is None:
                    if self._credentials is None:
                        channel = grpc.insecure_channel(self._target, options=self._options)
                    else:
                        channel = grpc.secure_channel(self._target, self._credentials, options=self._options)
                    self._calls = {
                        method: channel.unary_unary(
                            method,
                            request_serializer=lambda message: message.SerializeToString(),
                            response_deserializer=response_type.FromString,
                        )
                        for method, response_type in RESPONSE_TYPES.items()
                    }
                    self._channel = channel
        return self._calls

    def _run(self, flow: _flows.Flow) -> Any:
        calls = self._callables()
        reply: Any = None
        error: Optional[RetrievalError] = None
        try:
            while True:
                action = flow.throw(error) if error is not None else flow.send(reply)
                reply, error = None, None
                if isinstance(action, _flows.Sleep):
                    time.sleep(action.seconds)
                    continue
                try:
                    reply = calls[action.method](action.request, timeout=action.timeout_s)
                except grpc.RpcError as exc:
                    # The one conversion point; thrown into the flow outside
                    # this except block so the gRPC error is not chained.
                    error = from_rpc_error(exc)
        except StopIteration as stop:
            return stop.value
        finally:
            flow.close()

    def search(self, ids: Ids, k: Optional[int] = None, *, timeout_s: Optional[float] = None) -> List[SearchResult]:
        """Nearest candidates for each query id (signature serving_default).

        ids: one id or a 1-D sequence/array of str, bytes or int ids; they
            are converted to the model's id dtype (ints to decimal strings,
            decimal strings to int64), else ValueError/TypeError.
        k: None for all K neighbours the model returns, else 1..K
            (ValueError naming K if larger).
        Returns one SearchResult per id, in order. An id the model does not
        know raises InvalidRequestError whose message names it.
        """
        return self._run(_flows.search(self._state, ids, k, timeout_s))

    def search_by_vector(
        self, vectors: Vectors, k: Optional[int] = None, *, timeout_s: Optional[float] = None
    ) -> List[SearchResult]:
        """Nearest candidates for query embeddings (signature search_by_vector).

        vectors: float [dim] (one query) or [batch, dim]; sent as float32.
        k: as in search().
        """
        return self._run(_flows.search_by_vector(self._state, vectors, k, timeout_s))

    def examples(self, *, timeout_s: Optional[float] = None) -> Examples:
        """Known query ids, candidate ids and candidate vectors (signature examples)."""
        return self._run(_flows.examples(self._state, timeout_s))

    def status(self, *, timeout_s: Optional[float] = None) -> List[VersionStatus]:
        """Every version the server knows for the model, oldest first."""
        return self._run(_flows.status(self._state, timeout_s))

    def wait_until_available(self, timeout_s: float = DEFAULT_WAIT_TIMEOUT_S) -> VersionStatus:
        """Poll status() with backoff until a version is AVAILABLE; return it.

        Raises WaitTimeoutError (a DeadlineExceededError) after timeout_s,
        saying which state or error it saw last.
        """
        return self._run(_flows.wait_until_available(self._state, timeout_s))

    def metadata(self, *, timeout_s: Optional[float] = None) -> ModelMetadata:
        """The answering version's signatures with their inputs and outputs."""
        return self._run(_flows.metadata(self._state, timeout_s))

    def close(self) -> None:
        """Close the channel; further calls raise RuntimeError. Idempotent."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> "RetrievalClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
