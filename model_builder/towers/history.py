"""What each user already has: the items `serving_default` must not return, and the quality table skips.

One rule for both (so what is measured is what is served): a user's history is every
interaction of theirs in the data -- any weight, not only the positives the towers train on (a
movie rated 2 stars is still a movie the user has seen) -- on items of the catalogue, the most
recent `cap` of them (timestamps, else file order). The cap bounds the graph's cost: the
serving graph over-fetches k + width candidates per row and masks the history
(export/serving_graph.py), width = the longest capped history.

The serving table is [users, width] int32 candidate rows, each row sorted ascending and padded
with SEEN_PADDING (greater than every row, so a row stays sorted and `searchsorted` finds a
candidate in log(width) steps without a [B, fetch, width] comparison).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Pads a history row; greater than every candidate row, so rows stay sorted.
SEEN_PADDING = np.iinfo(np.int32).max


@dataclass(frozen=True)
class SeenItems:
    """The per-user history the serving graph masks, and how the cap shaped it."""

    table: np.ndarray  # [num_users, width] int32 candidate rows, ascending, SEEN_PADDING after the last
    cap: int
    longest: int  # the longest history before capping
    users_capped: int  # users whose older items fell outside the cap

    @property
    def width(self) -> int:
        """Columns of the table: the extra candidates every row fetches."""
        return int(self.table.shape[1])

    def to_info(self) -> dict:
        """build_info.json["serving"]["exclude_seen"]."""
        return {
            "rule": "every interaction of the user in the training data (any weight), the most recent `cap`",
            "cap": self.cap,
            "width": self.width,
            "longest_history": self.longest,
            "users_capped": self.users_capped,
        }


def rows_of(vocabulary: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Row of each value in a sorted vocabulary; -1 where the value is not in it."""
    if len(vocabulary) == 0:
        return np.full(len(values), -1, np.int64)
    pos = np.searchsorted(vocabulary, values)
    pos = np.minimum(pos, len(vocabulary) - 1)
    return np.where(vocabulary[pos] == values, pos, -1).astype(np.int64)


def latest(users: np.ndarray, items: np.ndarray, order_key: np.ndarray | None, cap: int) -> dict[int, np.ndarray]:
    """user row -> its distinct item rows among its `cap` most recent interactions (ascending)."""
    if len(users) == 0:
        return {}
    key = order_key if order_key is not None else np.arange(len(users), dtype=np.float64)
    order = np.lexsort((np.arange(len(users)), key, users))  # by user, then time, then file order
    u, i = users[order], items[order]
    starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1]
    ends = np.r_[starts[1:], len(u)]
    return {int(u[s]): np.unique(i[max(s, e - cap) : e]) for s, e in zip(starts, ends)}


def seen_table(
    users: np.ndarray, items: np.ndarray, order_key: np.ndarray | None, num_users: int, cap: int
) -> SeenItems:
    """The serving table from interactions given as (user row, item row); rows of -1 are dropped."""
    ok = (users >= 0) & (items >= 0)
    users, items = users[ok], items[ok]
    key = order_key[ok] if order_key is not None else None
    full = latest(users, items, key, len(users) + 1)
    capped = latest(users, items, key, cap)
    width = max((len(v) for v in capped.values()), default=0)
    table = np.full((num_users, width), SEEN_PADDING, np.int32)
    for user, rows in capped.items():
        table[user, : len(rows)] = rows
    longest = max((len(v) for v in full.values()), default=0)
    users_capped = sum(len(full[u]) > len(capped[u]) for u in capped)
    return SeenItems(table, cap, longest, int(users_capped))


def without_pairs(
    users: np.ndarray, items: np.ndarray, order_key: np.ndarray | None, drop_users: np.ndarray, drop_items: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """The interactions minus the (user, item) pairs given (the held-out targets of an evaluation)."""
    width = int(max(items.max(initial=0), drop_items.max(initial=0))) + 1
    keep = ~np.isin(users * width + items, drop_users * width + drop_items)
    return users[keep], items[keep], (order_key[keep] if order_key is not None else None)


def evaluation_seen(
    users: np.ndarray,
    items: np.ndarray,
    order_key: np.ndarray | None,
    held_out: tuple[np.ndarray, np.ndarray],
    cap: int,
) -> dict[int, np.ndarray]:
    """What the quality table excludes for each user: the serving rule applied to the data
    without the held-out targets (user row -> item rows; rows of -1 are dropped)."""
    ok = (users >= 0) & (items >= 0)
    key = order_key[ok] if order_key is not None else None
    users, items, key = without_pairs(users[ok], items[ok], key, *held_out)
    return latest(users, items, key, cap)
