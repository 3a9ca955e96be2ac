"""Load Polyvore outfits and Spotify MPD playlists into one typed `Dataset` of items and item sets.

Both public formats end up as the same three types so every later stage (index, GRPO, synth,
evaluate) is dataset-agnostic:

- `Item`: one catalog entry; `text` is what gets embedded, `payload` feeds Qdrant payload filters.
- `ItemSet`: one outfit or playlist; `intent` is its title, `item_ids` point into `Dataset.items`.
- `Dataset`: all items (insertion-ordered) and all sets; `Dataset.split(...)` picks train/val/test.

The split never comes from the source files: `split_of(set_id)` hashes the id, so every stage and
every machine agree on it without passing a split file around.

Rules shared by both loaders: a set whose title is empty after stripping, or that has no items,
is skipped (it can serve neither as a query nor as a target); duplicate item ids inside a set are
dropped, first occurrence kept; an item shared by several sets appears once in `items` (first seen
wins).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Any, Literal
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger(__name__)

Split = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("train", "val", "test")
# The payload fields each loader's items carry that the index makes filterable, with their index kinds.
POLYVORE_PAYLOAD_INDEX = {"category": "keyword", "category_id": "integer", "price": "float", "likes": "integer",
                          "set_id": "keyword", "tid": "keyword"}
MPD_PAYLOAD_INDEX = {"track": "keyword", "artist": "keyword", "album": "keyword"}

# Official Maryland Polyvore release file stems, in the order their outfits are appended.
POLYVORE_FILES = ("train_no_dup.json", "valid_no_dup.json", "test_no_dup.json")
POLYVORE_CATEGORIES = "category_id.txt"
MPD_PATTERNS = ("mpd.slice.*.json", "*.jsonl", "*.jsonl.gz")
DATASET_DIRS = {"polyvore": "polyvore", "mpd": "playlists"}


@dataclass(frozen=True, slots=True)
class Item:
    """One catalog entry: `text` is embedded, `payload` is JSON-able metadata for filters."""

    id: str
    text: str
    payload: dict


@dataclass(frozen=True, slots=True)
class ItemSet:
    """One outfit or playlist: a titled set of item ids (deduplicated, source order kept)."""

    id: str
    intent: str
    description: str
    item_ids: tuple[str, ...]


@dataclass(frozen=True)
class Dataset:
    """A named catalog of items plus the sets drawn from it."""

    name: str
    items: dict[str, Item]
    sets: list[ItemSet]
    # payload field -> Qdrant payload index kind: the fields the index makes filterable (each filter runs on
    # an index: ~2 ms instead of a payload scan of the whole catalog, ~0.2-0.7 s per query on MPD)
    payload_index: dict[str, str] = field(default_factory=dict)

    def split(self, name: Split) -> list[ItemSet]:
        """The sets whose `split_of(id)` is `name`, in dataset order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [s for s in self.sets if split_of(s.id) == name]


def split_of(set_id: str) -> Split:
    """Deterministic 8:1:1 train/val/test assignment of a set id.

    sha256 rather than Python's `hash()`, which is salted per process (PYTHONHASHSEED).
    The first 8 digest bytes are read big-endian.

    >>> split_of("209512492")
    'train'
    """
    digest = hashlib.sha256(f"r4t-split:{set_id}".encode()).digest()
    bucket = int.from_bytes(digest[:8], "big") % 10
    if bucket < 8:
        return "train"
    return "val" if bucket == 8 else "test"


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _open_text(path: Path) -> IO[str]:
    """Open a plain or gzip-compressed UTF-8 text file by its suffix."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def _clean(text: Any) -> str:
    """Collapse runs of whitespace; None and non-strings become ""."""
    return " ".join(text.split()) if isinstance(text, str) else ""


def _dedup(ids: Iterable[str]) -> tuple[str, ...]:
    # dict keeps insertion order, so this keeps the first occurrence of each id.
    return tuple(dict.fromkeys(ids))


def _make_set(set_id: str, title: Any, description: Any, item_ids: Iterable[str]) -> ItemSet | None:
    """Build an ItemSet, or None when it has an empty title or no items (the skip rule)."""
    intent = _clean(title)
    ids = _dedup(item_ids)
    if not intent or not ids:
        return None
    return ItemSet(id=set_id, intent=intent, description=_clean(description), item_ids=ids)


# ---------------------------------------------------------------------------------------------
# Polyvore (Maryland format)


def _read_categories(path: Path) -> dict[int, str]:
    """Parse `category_id.txt`: one `<id> <name>` per line; names may contain spaces."""
    categories: dict[int, str] = {}
    with path.open("r", encoding="utf-8") as f:
        for line in f:
            parts = line.strip().split(maxsplit=1)
            if parts and parts[0].isdigit():
                categories[int(parts[0])] = parts[1].strip() if len(parts) > 1 else ""
    return categories


def _tid(image_url: Any) -> str | None:
    """The `tid=<n>` query value of a Polyvore image URL: the item's stable cross-outfit id."""
    if not isinstance(image_url, str):
        return None
    values = parse_qs(urlsplit(image_url).query).get("tid")
    return values[0] if values else None


def polyvore_item_text(name: str, category: str) -> str:
    """Embedding text of a Polyvore item: `"<name> (<category>)"`.

    Either part alone when the other is empty; `"item"` when both are (never an empty string,
    which some tokenizers and stores reject).

    >>> polyvore_item_text("shein khaki chunky cardigan", "Cardigans")
    'shein khaki chunky cardigan (Cardigans)'
    >>> polyvore_item_text("", "Cardigans")
    'Cardigans'
    """
    if name and category:
        return f"{name} ({category})"
    return name or category or "item"


def _polyvore_item(set_id: str, raw: dict, categories: dict[int, str]) -> Item:
    category_id = int(raw.get("categoryid", -1))
    category = categories.get(category_id, "")
    price = raw.get("price")
    # The source encodes "unknown price" as -1.
    price = float(price) if isinstance(price, (int, float)) and price >= 0 else None
    payload = {
        "category": category,
        "category_id": category_id,
        "price": price,
        "likes": int(raw.get("likes") or 0),
        "set_id": set_id,
        "tid": _tid(raw.get("image")),
    }
    text = polyvore_item_text(_clean(raw.get("name")), category)
    return Item(id=f"{set_id}_{raw['index']}", text=text, payload=payload)


def _polyvore_files(path: Path) -> list[Path]:
    """The outfit files present in `path`, in train/valid/test order; plain wins over `.gz`."""
    found = []
    for stem in POLYVORE_FILES:
        for candidate in (path / stem, path / f"{stem}.gz"):
            if candidate.is_file():
                found.append(candidate)
                break
    return found


def load_polyvore(path: Path, limit: int | None = None) -> Dataset:
    """Load a Maryland Polyvore directory (any of train/valid/test `_no_dup.json[.gz]`).

    Item id is `f"{set_id}_{index}"` (the official fill-in-the-blank convention), so an item that
    occurs in two outfits is two items; its `payload["tid"]` links them. `limit` caps the number
    of outfits read, across files.
    """
    path = Path(path)
    files = _polyvore_files(path)
    categories_file = path / POLYVORE_CATEGORIES
    if not files or not categories_file.is_file():
        raise FileNotFoundError(
            f"no Polyvore data in {path}: expected {POLYVORE_CATEGORIES} and at least one of "
            f"{', '.join(POLYVORE_FILES)} (plain or .gz)"
        )
    categories = _read_categories(categories_file)
    items: dict[str, Item] = {}
    sets: list[ItemSet] = []
    seen_sets: set[str] = set()
    skipped = 0
    for outfit in islice(_iter_polyvore(files), limit):
        set_id = str(outfit["set_id"])
        if set_id in seen_sets:
            skipped += 1
            continue
        outfit_items = [_polyvore_item(set_id, raw, categories) for raw in outfit.get("items", [])]
        item_set = _make_set(set_id, outfit.get("name"), outfit.get("desc"), (i.id for i in outfit_items))
        if item_set is None:
            skipped += 1
            continue
        seen_sets.add(set_id)
        sets.append(item_set)
        for item in outfit_items:
            items.setdefault(item.id, item)
    log.info("polyvore: %d sets, %d items, %d sets skipped from %s", len(sets), len(items), skipped, path)
    return Dataset(name="polyvore", items=items, sets=sets, payload_index=POLYVORE_PAYLOAD_INDEX)


def _iter_polyvore(files: list[Path]) -> Iterator[dict]:
    for file in files:
        # Each file is a single JSON array (~40 MB for the official train split), so no streaming.
        with _open_text(file) as f:
            yield from json.load(f)


# ---------------------------------------------------------------------------------------------
# Spotify Million Playlist Dataset


def _mpd_files(path: Path) -> list[Path]:
    """Playlist files under `path` (a file, or a directory searched non-recursively), sorted."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted({f for pattern in MPD_PATTERNS for f in path.glob(pattern) if f.is_file()})


def _iter_mpd_file(path: Path) -> Iterator[dict]:
    """Playlist objects from one JSONL(.gz) file, or from one `{"playlists": [...]}` slice file."""
    name = path.name
    if name.endswith(".jsonl") or name.endswith(".jsonl.gz"):
        with _open_text(path) as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
        return
    # An official slice is one object of 1,000 playlists (~30 MB): streaming buys nothing here.
    with _open_text(path) as f:
        yield from json.load(f).get("playlists", [])


def mpd_item_text(track: str, artist: str) -> str:
    """Embedding text of a track: `"<track> — <artist>"` (em dash), either part alone if the other is empty.

    >>> mpd_item_text("Wild World", "Yusuf / Cat Stevens")
    'Wild World — Yusuf / Cat Stevens'
    """
    return " — ".join(part for part in (track, artist) if part) or "track"


def _mpd_item(raw: dict) -> Item:
    track, artist = _clean(raw.get("track_name")), _clean(raw.get("artist_name"))
    payload = {"track": track, "artist": artist}
    # The local subset dropped album_name; the official slices carry it.
    if "album_name" in raw:
        payload["album"] = _clean(raw["album_name"])
    return Item(id=raw["track_uri"], text=mpd_item_text(track, artist), payload=payload)


def load_mpd(path: Path, limit: int | None = None) -> Dataset:
    """Load MPD playlists from a file or directory of `mpd.slice.*.json` / `*.jsonl[.gz]`.

    Files are read in sorted path order. `limit` caps the playlists read (skipped ones count).
    Item id is the `track_uri`; set id is `str(pid)`. Tracks without a `track_uri` are ignored.
    """
    path = Path(path)
    files = _mpd_files(path)
    if not files:
        raise FileNotFoundError(
            f"no MPD playlists in {path}: expected {' or '.join(MPD_PATTERNS)} files (or one such file)"
        )
    items: dict[str, Item] = {}
    sets: list[ItemSet] = []
    skipped = 0
    playlists = (p for file in files for p in _iter_mpd_file(file))
    for playlist in islice(playlists, limit):
        tracks = [t for t in playlist.get("tracks") or [] if t.get("track_uri")]
        item_set = _make_set(
            str(playlist["pid"]), playlist.get("name"), playlist.get("description"),
            (t["track_uri"] for t in tracks),
        )
        if item_set is None:
            skipped += 1
            continue
        sets.append(item_set)
        for raw in tracks:
            if raw["track_uri"] not in items:
                items[raw["track_uri"]] = _mpd_item(raw)
    log.info("mpd: %d sets, %d items, %d playlists skipped from %s", len(sets), len(items), skipped, path)
    return Dataset(name="mpd", items=items, sets=sets, payload_index=MPD_PAYLOAD_INDEX)


# ---------------------------------------------------------------------------------------------
# Entry points by name


def load_dataset(name: str, data_dir: Path, limit: int | None = None) -> Dataset:
    """Load `"polyvore"` from `data_dir/polyvore` or `"mpd"` from `data_dir/playlists`."""
    if name not in DATASET_DIRS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_DIRS)}")
    path = Path(data_dir) / DATASET_DIRS[name]
    if name == "polyvore":
        return load_polyvore(path, limit=limit)
    return load_mpd(path, limit=limit)


def default_data_dir() -> Path:
    """`$R4T_DATA_DIR`, else `<repo>/../shared/data` if it exists, else `./data`."""
    env = os.environ.get("R4T_DATA_DIR")
    if env:
        return Path(env)
    shared = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
    if shared.is_dir():
        return shared
    return Path.cwd() / "data"
