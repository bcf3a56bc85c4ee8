"""What `build` is asked to do: every option, its default and help text, and the checks between them."""

from __future__ import annotations

from dataclasses import dataclass, field

from model_builder import settings
from model_builder.contract import MAX_EXAMPLES, QUERY_SIDES, UNKNOWN_ID_POLICIES
from model_builder.errors import ConfigError
from model_builder.index import recall

QUERY_KINDS = ("user", "item")


@dataclass(frozen=True)
class BuildConfig:
    """What to build, from which data, and where to publish it."""

    dataset: str = field(
        default="movielens-100k",
        metadata={"help": "movielens-100k, synthetic, a GroupLens ml-100k folder, or an interactions .csv/.parquet"},
    )
    items: str | None = field(default=None, metadata={"help": "optional item metadata file (item_id,title,...)"})
    user_features: str | None = field(
        default=None,
        metadata={
            "help": "user features file (user_id + typed columns, README 'Data format'); replaces a built-in dataset's"
        },
    )
    item_features: str | None = field(
        default=None,
        metadata={
            "help": "item features file (item_id + typed columns); items without interactions enter the index from their features"
        },
    )
    features: bool = field(
        default=True,
        metadata={
            "help": "train feature towers when the data has user/item features (MovieLens 100K has); --no-features trains id-only towers"
        },
    )
    cold_users: float = field(
        default=0.2,
        metadata={
            "help": "feature towers: share of users held out of training entirely to measure cold-start quality (0 = none); the export is refit on everyone"
        },
    )
    cold_items: float = field(
        default=0.1,
        metadata={
            "help": "feature towers: share of items held out of training entirely to measure cold-start quality (0 = none)"
        },
    )
    compare_id_only: bool = field(
        default=True,
        metadata={
            "help": "feature towers: also train id-only towers on the same split and report them next to the feature towers (one more training run)"
        },
    )
    min_weight: float | None = field(
        default=None,
        metadata={
            "help": "interactions with weight >= this are positives (default: 4 for MovieLens ratings, else every row)"
        },
    )
    holdout_per_user: int = field(
        default=1, metadata={"help": "latest positives per user held out to measure hit-rate/recall"}
    )
    refit: bool = field(
        default=True,
        metadata={"help": "retrain on all positives after evaluation so held-out items get trained embeddings"},
    )
    exclude_seen: bool = field(
        default=True,
        metadata={
            "help": "user -> items models trained on interactions: serving_default (and search_by_features for a known id) never returns an item the user interacted with in the data (any weight), and the quality table skips them alike; --no-exclude-seen serves raw nearest neighbours"
        },
    )
    seen_cap: int = field(
        default=500,
        metadata={
            "help": "with --exclude-seen: the most recent interactions per user that are excluded (older ones may be recommended); every query fetches k + the longest capped history from the index, so this bounds the cost"
        },
    )
    query: str = field(
        default="user",
        metadata={"help": "which tower an id goes through: user (user -> items) or item (item -> similar items)"},
    )
    candidates: str | None = field(
        default=None, metadata={"help": "import candidate embeddings (.npy/.npz/.parquet) instead of training"}
    )
    query_embeddings: str | None = field(
        default=None,
        metadata={"help": "import query embeddings (ids + vectors, like --candidates): a materialized query tower"},
    )
    query_tower: str | None = field(
        default=None, metadata={"help": "import a query tower (.keras or SavedModel dir) to embed --query-ids"}
    )
    query_ids: str | None = field(
        default=None, metadata={"help": "query ids for an imported user tower (.txt/.npy/.csv/.parquet)"}
    )
    out: str = field(default="models", metadata={"help": "model base path; the version goes to OUT/MODEL_NAME/VERSION"})
    model_name: str = field(
        default_factory=settings.model_name, metadata={"help": "model name (TF Serving's --model_name)"}
    )
    version: int | None = field(
        default=None, metadata={"help": "version number; default: highest existing + 1 (never overwrites)"}
    )
    k: int = field(default=10, metadata={"help": "results per query, fixed for this version"})
    max_batch_size: int = field(
        default=1024,
        metadata={
            "help": "largest batch one request may carry (warmup records stay within it; TF Serving's batching file must accept it)"
        },
    )
    num_examples: int = field(
        default=8,
        metadata={
            "help": f"known ids published by the 'examples' signature for smoke tests (0 disables, at most {MAX_EXAMPLES})"
        },
    )
    unknown_ids: str = field(
        default="error",
        metadata={
            "help": "what an unknown query id's row gets (found=false either way): error = no ids (our client raises InvalidRequestError naming them), fallback = the k most popular training items"
        },
    )
    batching_parameters: str | None = field(
        default=None,
        metadata={
            "help": "TF Serving batching file the version must suit (serving rules checked before publishing); default: the image's k8s/base/config/batching_parameters.txt when building from a checkout, else the model alone"
        },
    )
    target_recall: float = field(
        default=recall.DEFAULT_TARGET_RECALL,
        metadata={"help": "recall@k vs exact search the version must reach to be published"},
    )
    tune: bool = field(
        default=True,
        metadata={
            "help": "search index structures and their leaves-to-search/reorder on held-out queries for the fastest served setting reaching --target-recall (see --optimize, --index-search, --search-budget-factor); off: the rule of thumb as is"
        },
    )
    verify_queries: int = field(
        default=recall.DEFAULT_QUERIES, metadata={"help": "held-out queries used by the recall gate"}
    )
    tuning_queries: str | None = field(
        default=None,
        metadata={
            "help": "query vectors production sends (.npy, .npz with array 'vectors', .parquet with a list column; the catalogue's dimension, at least 200 rows): split once by a fixed seed into the index search's queries (up to 1000) and a held-out part (up to --verify-queries, at most half) on which the gate scores search_by_vector; default: both sample the catalogue itself"
        },
    )
    item_attributes: str | None = field(
        default=None,
        metadata={
            "help": "item attributes for per-request filters (signature search_filtered): an item features file (item_id + multi/categorical columns = token namespaces, numeric columns = ranges), or 'dataset' for the dataset's own item features (MovieLens: genre, year)"
        },
    )
    crowding_attribute: str | None = field(
        default=None,
        metadata={"help": "token namespace requests may crowd by (max_per results per value; an item's first token)"},
    )
    filter_tokens_width: int = field(
        default=16, metadata={"help": "allow/deny tokens per request row (fixed width: TF Serving batching)"}
    )
    filter_exclude_width: int = field(
        default=64, metadata={"help": "ids a request row may exclude (fixed width: TF Serving batching)"}
    )
    filter_fetch: int = field(
        default=1024,
        metadata={
            "help": "filtered rows fetch this many from the index; rows whose filter passes fewer than 4*k of them (expected) score the allowed set exactly"
        },
    )
    shards: int = field(
        default=1,
        metadata={
            "help": "split the candidates into this many models NAME-shard-0..K-1 (crc32 of the id mod K), one version number, each with its own index and gate, plus the merged answer's recall checked against exact search over the whole catalogue (README 'Sharding')"
        },
    )

    query_side: str = field(
        default="replicated",
        metadata={
            "help": "with --shards: replicated = every shard holds the whole query side (one round trip per search); partitioned = shard i holds only the query ids whose crc32 mod K is i (1/K of the query table's memory; the sharded client asks that home shard first, then the others by vector: two round trips) (README 'Sharding')"
        },
    )

    def validate(self) -> None:
        """Rejects inconsistent flags before any work starts."""
        if self.query not in QUERY_KINDS:
            raise ConfigError(f"--query '{self.query}': choose user or item")
        if not 0.0 <= self.target_recall <= 1.0:
            raise ConfigError("--target-recall must be between 0 and 1")
        if self.k < 1 or self.max_batch_size < 1 or self.verify_queries < 1:
            raise ConfigError("-k, --max-batch-size and --verify-queries must be at least 1")
        if not 0 <= self.num_examples <= MAX_EXAMPLES:
            raise ConfigError(f"--num-examples must be between 0 and {MAX_EXAMPLES}")
        if self.unknown_ids not in UNKNOWN_ID_POLICIES:
            raise ConfigError(f"--unknown-ids '{self.unknown_ids}': choose {' or '.join(UNKNOWN_ID_POLICIES)}")
        if self.unknown_ids == "fallback" and self.candidates:
            raise ConfigError(
                "--unknown-ids fallback ranks items by popularity in the training interactions; "
                "imported --candidates have none: use --unknown-ids error"
            )
        if self.version is not None and self.version < 1:
            raise ConfigError("--version must be a positive integer (TF Serving's version folders are numbers)")
        if self.candidates is None and (self.query_tower or self.query_ids or self.query_embeddings):
            raise ConfigError(
                "--query-embeddings/--query-tower/--query-ids need --candidates (importing replaces training)"
            )
        if self.query_embeddings and self.query_tower:
            raise ConfigError("give either --query-embeddings or --query-tower, not both")
        if self.query_tower and not self.query_ids:
            raise ConfigError("--query-tower needs --query-ids: the ids to embed")
        if self.candidates and self.query == "user" and not (self.query_tower or self.query_embeddings):
            raise ConfigError(
                "--query user with imported --candidates needs --query-embeddings or --query-tower (or use --query item)"
            )
        if self.candidates and self.query == "item" and (self.query_tower or self.query_embeddings):
            raise ConfigError("--query item serves candidates as queries: drop --query-embeddings/--query-tower")
        if (self.user_features or self.item_features) and (self.candidates or not self.features):
            raise ConfigError(
                "--user-features/--item-features train feature towers: drop --candidates and --no-features"
            )
        if min(self.filter_tokens_width, self.filter_exclude_width, self.filter_fetch) < 1:
            raise ConfigError("--filter-tokens-width, --filter-exclude-width and --filter-fetch must be at least 1")
        if self.crowding_attribute and not self.item_attributes:
            raise ConfigError("--crowding-attribute needs --item-attributes (it names one of their token namespaces)")
        if self.shards < 1:
            raise ConfigError("--shards must be at least 1 (1 = one unsharded model)")
        if self.shards > 1 and self.unknown_ids == "fallback":
            raise ConfigError(
                "--unknown-ids fallback with --shards: every shard would answer an unknown id with the same "
                "popular items; use --unknown-ids error"
            )
        self._validate_query_side()
        if self.seen_cap < 1:
            raise ConfigError("--seen-cap must be at least 1 (use --no-exclude-seen to serve without exclusions)")
        if not (0 <= self.cold_users < 1 and 0 <= self.cold_items < 1):
            raise ConfigError("--cold-users and --cold-items are shares: use values in [0, 1)")

    def _validate_query_side(self) -> None:
        if self.query_side not in QUERY_SIDES:
            raise ConfigError(f"--query-side '{self.query_side}': choose {' or '.join(QUERY_SIDES)}")
        if self.query_side == "partitioned" and self.shards < 2:
            raise ConfigError("--query-side partitioned splits the query ids over shards: it needs --shards 2 or more")
        if self.query_side == "partitioned" and self.query == "user" and self.exclude_seen and not self.candidates:
            # A user's history spans every shard but only the home shard knows the user.
            raise ConfigError(
                "--query-side partitioned with a trained user -> items model: the other shards cannot exclude "
                "a user's history (they answer by vector); add --no-exclude-seen or use --query-side replicated"
            )
