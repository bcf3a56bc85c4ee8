"""A real text corpus available offline: WordNet 3.0's synsets (Debian's wordnet-base).

Each synset is one catalogue item, its text "lemma, lemma: definition"; the
usage examples WordNet quotes in glosses ("the dog barked all night") are the
queries: real sentences, never in the catalogue, whose nearest definitions are
what a semantic search would return. Princeton's license allows use and
redistribution with its notice; the files are read in place, never copied
into the repository.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

WORDNET = Path("/usr/share/wordnet")
WORDNET_HINT = "apt-get install wordnet-base (Debian's copy of Princeton WordNet 3.0; make datasets installs it)"
PARTS = ("noun", "verb", "adj", "adv")
_EXAMPLE = re.compile(r'"([^"]+)"')


@dataclass(frozen=True)
class Corpus:
    """Synset texts (the catalogue) and example sentences (the queries)."""

    items: list[str]
    examples: list[str]


def parse_line(line: str) -> tuple[str, list[str]] | None:
    """One data.* line -> ("lemma, lemma: definition", [examples]); None for the license header."""
    if line.startswith("  ") or " | " not in line:
        return None
    fields, gloss = line.split(" | ", 1)
    parts = fields.split()
    count = int(parts[3], 16)  # w_cnt is two hexadecimal digits
    lemmas = [re.sub(r"\(.*\)$", "", w).replace("_", " ") for w in parts[4 : 4 + 2 * count : 2]]
    definition, _, rest = gloss.strip().partition('; "')
    examples = _EXAMPLE.findall('"' + rest) if rest else []
    return f"{', '.join(lemmas)}: {definition.strip()}", [e.strip() for e in examples if e.strip()]


def load(folder: Path = WORDNET) -> Corpus:
    """Every synset of the four data files, in file order."""
    files = [folder / f"data.{part}" for part in PARTS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{', '.join(missing)} not found: {WORDNET_HINT}")
    items: list[str] = []
    examples: list[str] = []
    for path in files:
        for line in path.read_text(encoding="latin-1").splitlines():
            parsed = parse_line(line)
            if parsed:
                items.append(parsed[0])
                examples += parsed[1]
    return Corpus(items, examples)
