"""The filter_schema flow: a model version's FilterSchema, read once per version and cached.

Split from _flows (which imports it) so that module stays one screen per operation; it uses
_flows.call at run time, after both modules are loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from . import _filters as fl
from . import _requests as rq
from . import _responses as rs
from ._errors import IncompatibleModelError

if TYPE_CHECKING:
    from ._flows import ClientState, Deadline, Flow
    from ._types import CallSettings


def filter_schema(state: ClientState, deadline: Deadline, settings: CallSettings, contract: rs.Contract) -> Flow:
    """The version's FilterSchema: cached per version, else read from filter_schema (2 calls)."""
    what = state.ref.describe(contract.version)
    if contract.filtered is None:
        raise IncompatibleModelError(
            f"{what} has no signature {fl.FILTERED_SIGNATURE!r}: it was built without item attributes "
            "(build with --item-attributes FILE, or --item-attributes dataset for MovieLens)"
        )
    if state.filter_schema is not None and state.filter_schema[0] == contract.version:
        return state.filter_schema[1]
    from . import _flows

    entries: list[str] = []
    size, start = 1, 0
    while start < size:
        index = list(range(start, min(size, start + 512)))
        request = rq.predict_request(
            state.ref, fl.SCHEMA_SIGNATURE, {"index": rq.to_tensor_proto(np.asarray(index, np.int64))}
        )
        response = yield from _flows.call(state, deadline, rq.PREDICT, request, settings)
        size = int(rs.output_array(response, "size", what)[0]) if index else 0
        entries += [e.decode() if isinstance(e, bytes) else str(e) for e in rs.output_array(response, "entry", what)]
        start += len(index)
    schema = fl.FilterSchema.parse(contract.filtered, entries[:size], what)
    state.filter_schema = (contract.version, schema)
    return schema
