"""Tests for training/data.py: both loaders on real slices, file-format equivalence, splits."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from training.data import (
    SPLITS,
    Dataset,
    ItemSet,
    default_data_dir,
    load_dataset,
    load_mpd,
    load_polyvore,
    split_of,
)

DATA_DIR = default_data_dir()
POLYVORE_DIR = DATA_DIR / "polyvore"
MPD_DIR = DATA_DIR / "playlists"
MPD_FILE = MPD_DIR / "mpd_subset_playlists.jsonl.gz"

needs_polyvore = pytest.mark.skipif(
    not (POLYVORE_DIR / "valid_no_dup.json.gz").is_file(), reason=f"no Polyvore data in {POLYVORE_DIR}"
)
needs_mpd = pytest.mark.skipif(not MPD_FILE.is_file(), reason=f"no MPD subset in {MPD_DIR}")


@pytest.fixture(scope="module")
def polyvore() -> Dataset:
    if not (POLYVORE_DIR / "valid_no_dup.json.gz").is_file():
        pytest.skip(f"no Polyvore data in {POLYVORE_DIR}")
    return load_polyvore(POLYVORE_DIR)


@pytest.fixture(scope="module")
def mpd_small() -> Dataset:
    if not MPD_FILE.is_file():
        pytest.skip(f"no MPD subset in {MPD_DIR}")
    return load_mpd(MPD_DIR, limit=50)


def _raw_playlists(n: int) -> list[dict]:
    with gzip.open(MPD_FILE, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line, _ in zip(f, range(n))]


def _write_jsonl_gz(path: Path, playlists: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(p) + "\n" for p in playlists)


def _polyvore_dir(tmp_path: Path, files: dict[str, list[dict]], categories: str) -> Path:
    for name, outfits in files.items():
        (tmp_path / name).write_text(json.dumps(outfits), encoding="utf-8")
    (tmp_path / "category_id.txt").write_text(categories, encoding="utf-8")
    return tmp_path


# --- Polyvore -------------------------------------------------------------------------------


def test_polyvore_counts_match_source(polyvore):
    # SOURCE.md: 1,497 outfits, 9,070 item occurrences (ids are per occurrence: set_id_index).
    assert polyvore.name == "polyvore"
    assert len(polyvore.sets) == 1497
    assert len(polyvore.items) == 9070
    assert sum(len(s.item_ids) for s in polyvore.sets) == 9070
    # 8,923 unique items by tid; 140 items occur in more than one outfit.
    assert len({i.payload["tid"] for i in polyvore.items.values()}) == 8923


def test_polyvore_first_outfit_and_item(polyvore):
    first = polyvore.sets[0]
    assert first.id == "209512492"
    assert first.intent == "THANKFUL FOR MY LULAROE PANTS!"
    assert first.description == "An art collage from October 2016 by augustana featuring art"
    assert first.item_ids == ("209512492_1", "209512492_2", "209512492_3", "209512492_4")
    item = polyvore.items["209512492_1"]
    assert next(iter(polyvore.items)) == item.id
    assert item.text == "shein sheinside khaki short sleeve pockets chunky cardigan (Cardigans)"
    # Values quoted in SOURCE.md (xthan/polyvore-dataset issue #8).
    assert item.payload == {
        "category": "Cardigans", "category_id": 18, "price": 22.0, "likes": 977,
        "set_id": "209512492", "tid": "148259102",
    }
    json.dumps(item.payload)  # payloads must be JSON-able for the vector store


def test_polyvore_empty_name_gets_category_text_and_unknown_price(polyvore):
    item = polyvore.items["209512492_4"]  # name "" and price -1 in the source
    assert item.text == "Home Decor"
    assert item.payload["price"] is None
    assert item.payload["tid"] == "151052339"
    assert all(i.text.strip() for i in polyvore.items.values())


def test_polyvore_edge_cases(tmp_path):
    outfit = {
        "set_id": "1", "name": "  Night   out ", "desc": "d", "items": [
            {"index": 1, "name": "", "price": -1, "likes": 0, "categoryid": 999999, "image": "http://x/img"},
            {"index": 2, "name": "red  dress", "price": 5, "likes": 2, "categoryid": 4,
             "image": "http://x/img-thing?.out=jpg&tid=77&size=m"},
            {"index": 3, "name": "bag", "price": 1.5, "likes": 1, "categoryid": 999999},
        ],
    }
    untitled = {"set_id": "2", "name": " ", "desc": "", "items": outfit["items"]}
    path = _polyvore_dir(tmp_path, {"test_no_dup.json": [outfit, untitled]}, "4 Day Dresses\n")
    ds = load_polyvore(path)
    assert [s.id for s in ds.sets] == ["1"]  # the untitled outfit is skipped, and its items with it
    assert ds.sets[0].intent == "Night out"
    one, two, three = (ds.items[f"1_{i}"] for i in (1, 2, 3))
    assert one.text == "item" and one.payload["tid"] is None and one.payload["category"] == ""
    assert two.text == "red dress (Day Dresses)"
    assert two.payload["tid"] == "77" and two.payload["price"] == 5.0
    assert isinstance(two.payload["price"], float)
    assert three.text == "bag"


@needs_polyvore
def test_polyvore_plain_json_equals_gz_and_official_split_files_load(tmp_path, polyvore):
    with gzip.open(POLYVORE_DIR / "valid_no_dup.json.gz", "rt", encoding="utf-8") as f:
        outfits = json.load(f)
    categories = (POLYVORE_DIR / "category_id.txt").read_text(encoding="utf-8")
    (tmp_path / "plain").mkdir()
    plain = _polyvore_dir(tmp_path / "plain", {"valid_no_dup.json": outfits}, categories)
    assert load_polyvore(plain) == polyvore
    # The full release has train/valid/test files; they are appended in that order.
    (tmp_path / "three").mkdir()
    three = _polyvore_dir(
        tmp_path / "three",
        {"train_no_dup.json": outfits[:700], "valid_no_dup.json": outfits[700:1000]},
        categories,
    )
    with gzip.open(three / "test_no_dup.json.gz", "wt", encoding="utf-8") as f:
        json.dump(outfits[1000:], f)
    assert load_polyvore(three) == polyvore
    assert load_polyvore(three, limit=10).sets == polyvore.sets[:10]


# --- MPD -----------------------------------------------------------------------------------


def test_mpd_small_slice(mpd_small):
    assert mpd_small.name == "mpd"
    assert len(mpd_small.sets) == 50
    first = mpd_small.sets[0]
    assert (first.id, first.intent, first.description) == ("2365", "classics", "")
    item = mpd_small.items["spotify:track:269OfNY9Je1QWaDnu31KKp"]
    assert item.text == "Wild World — Yusuf / Cat Stevens"
    assert item.payload == {"track": "Wild World", "artist": "Yusuf / Cat Stevens"}
    # Shared tracks appear once in `items`, and every referenced id is there.
    referenced = {i for s in mpd_small.sets for i in s.item_ids}
    assert referenced == set(mpd_small.items)


@needs_mpd
def test_mpd_dedups_repeated_tracks(mpd_small):
    raw = _raw_playlists(1)[0]  # pid 2365: 120 track entries, 117 distinct
    uris = [t["track_uri"] for t in raw["tracks"]]
    assert len(uris) == 120
    assert mpd_small.sets[0].item_ids == tuple(dict.fromkeys(uris))
    assert len(mpd_small.sets[0].item_ids) == 117


def test_mpd_tiny_jsonl_rules(tmp_path):
    def track(uri, name="t", artist="a"):
        return {"track_uri": uri, "track_name": name, "artist_name": artist}

    playlists = [
        {"pid": 7, "name": " Road trip ", "description": "sun",
         "tracks": [track("u:b"), track("u:a"), track("u:b")]},
        {"pid": 8, "name": "   ", "tracks": [track("u:c")]},  # empty title: skipped
        {"pid": 9, "name": "empty", "tracks": []},  # no tracks: skipped
        {"pid": 10, "name": "again", "tracks": [track("u:a", "other", "x"), track("u:d", "song", "")]},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in playlists) + "\n", encoding="utf-8")
    ds = load_mpd(path)
    assert ds.sets == [
        ItemSet(id="7", intent="Road trip", description="sun", item_ids=("u:b", "u:a")),
        ItemSet(id="10", intent="again", description="", item_ids=("u:a", "u:d")),
    ]
    assert list(ds.items) == ["u:b", "u:a", "u:d"]
    assert ds.items["u:a"].text == "t — a"  # first occurrence wins
    assert ds.items["u:d"].text == "song"
    assert [s.id for s in load_mpd(path, limit=3).sets] == ["7"]  # skipped playlists count toward limit


@needs_mpd
def test_mpd_official_slice_equals_jsonl_gz(tmp_path):
    raw = _raw_playlists(20)
    slice_dir, jsonl_dir = tmp_path / "slice", tmp_path / "jsonl"
    slice_dir.mkdir()
    jsonl_dir.mkdir()
    header = {"generated_on": "2017-12-03 08:41:42.057563", "slice": "0-999", "version": "v1"}
    (slice_dir / "mpd.slice.0-999.json").write_text(
        json.dumps({"info": header, "playlists": raw}), encoding="utf-8"
    )
    _write_jsonl_gz(jsonl_dir / "part.jsonl.gz", raw)
    from_slice = load_mpd(slice_dir)
    assert from_slice == load_mpd(jsonl_dir)
    assert from_slice == load_mpd(slice_dir / "mpd.slice.0-999.json")
    assert from_slice == load_mpd(MPD_DIR, limit=20)


def test_mpd_files_read_in_sorted_order_and_album_kept(tmp_path):
    def playlist(pid):
        track = {"track_uri": f"u:{pid}", "track_name": "n", "artist_name": "a", "album_name": "Al"}
        return {"pid": pid, "name": "p", "tracks": [track]}

    _write_jsonl_gz(tmp_path / "b.jsonl.gz", [playlist(2)])
    (tmp_path / "a.jsonl").write_text(json.dumps(playlist(1)) + "\n", encoding="utf-8")
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")  # not a slice name: ignored
    ds = load_mpd(tmp_path)
    assert [s.id for s in ds.sets] == ["1", "2"]
    assert ds.items["u:1"].payload == {"track": "n", "artist": "a", "album": "Al"}


# --- Splits ---------------------------------------------------------------------------------


def test_split_of_golden_values():
    # Fixed forever: changing them reshuffles every stage's train/val/test.
    golden = {"0": "train", "4": "val", "14": "test", "15": "val", "20": "test", "209512492": "train"}
    assert {k: split_of(k) for k in golden} == golden


@pytest.mark.parametrize("dataset", ["polyvore", "mpd"])
def test_split_proportions_and_partition(dataset):
    if not (POLYVORE_DIR if dataset == "polyvore" else MPD_DIR).is_dir():
        pytest.skip(f"no {dataset} data in {DATA_DIR}")
    ds = load_dataset(dataset, DATA_DIR, limit=1000 if dataset == "mpd" else None)
    parts = {name: ds.split(name) for name in SPLITS}
    # Partition: disjoint, covering, each in dataset order.
    ids = [s.id for name in SPLITS for s in parts[name]]
    assert sorted(ids) == sorted(s.id for s in ds.sets) and len(set(ids)) == len(ids)
    for name, part in parts.items():
        assert part == [s for s in ds.sets if split_of(s.id) == name]
    # 8:1:1 up to sampling noise (over 4 standard deviations at n >= 1,000).
    n = len(ds.sets)
    for name, expected in zip(SPLITS, (0.8, 0.1, 0.1)):
        assert abs(len(parts[name]) / n - expected) < 0.04, (name, len(parts[name]), n)


def test_split_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown split"):
        Dataset(name="x", items={}, sets=[]).split("dev")


# --- Entry points ---------------------------------------------------------------------------


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="unknown dataset 'movies'.*polyvore, mpd"):
        load_dataset("movies", DATA_DIR)


@pytest.mark.parametrize("name, expected", [("polyvore", "category_id.txt"), ("mpd", "mpd.slice")])
def test_load_dataset_missing_files(tmp_path, name, expected):
    with pytest.raises(FileNotFoundError, match=expected):
        load_dataset(name, tmp_path)


@needs_polyvore
def test_load_dataset_polyvore_by_name(polyvore, tmp_path):
    assert load_dataset("polyvore", DATA_DIR) == polyvore
    shutil.copy(POLYVORE_DIR / "valid_no_dup.json.gz", tmp_path / "valid_no_dup.json.gz")
    with pytest.raises(FileNotFoundError, match="category_id.txt"):
        load_polyvore(tmp_path)


def test_default_data_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("R4T_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.delenv("R4T_DATA_DIR")
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    assert default_data_dir() == (shared if shared.is_dir() else Path.cwd() / "data")
