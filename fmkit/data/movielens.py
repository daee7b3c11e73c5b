"""MovieLens 100k as one table of raw columns, for the DeepFM example and tests.

DeepFM reads one row per example, so the ratings (``u.data`` or a split such as
``ua.base``/``ua.test``) are joined with the user (``u.user``: age, gender, occupation, zip
code) and item (``u.item``: release year, genres) side tables into CSV files:

    python -m fmkit.data.movielens ../shared/data/movielens_100k data/ml100k

writes ``data/ml100k/ua.base.csv`` and ``ua.test.csv`` with the columns of
:data:`COLUMNS`; ``label`` is 1 for a rating of 4 or 5 (as the usual CTR-style benchmarks on
MovieLens define a positive), ``rating`` keeps the rating, ``genres`` lists the item's genres
separated by ``|``.
"""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

import numpy as np

from fmkit import files

GENRES = ("unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
          "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
          "Romance", "Sci-Fi", "Thriller", "War", "Western")
COLUMNS = ("label", "rating", "user_id", "item_id", "age", "gender", "occupation", "zip",
           "year", "genres")


def _users(directory: Path) -> dict[str, list[str]]:
    users = {}
    with open(directory / "u.user", encoding="latin-1") as f:
        for line in f:
            user, age, gender, occupation, zip_code = line.rstrip("\n").split("|")
            users[user] = [age, gender, occupation, zip_code[:3]]
    return users


def _items(directory: Path) -> dict[str, list[str]]:
    items = {}
    with open(directory / "u.item", encoding="latin-1") as f:
        for line in f:
            fields = line.rstrip("\n").split("|")
            released = fields[2]
            year = released[-4:] if released else ""
            genres = "|".join(g for g, flag in zip(GENRES, fields[5:]) if flag == "1")
            items[fields[0]] = [year, genres]
    return items


def join_ratings(directory: str | Path, ratings: str, output: str | Path) -> int:
    """Write ``output`` (CSV with a header) for the ratings file ``ratings`` of the MovieLens
    100k ``directory``; returns the row count."""
    directory = Path(directory)
    users, items = _users(directory), _items(directory)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    rows = 0
    with open(directory / ratings) as f, files.output_stream(output) as raw:
        out = io.TextIOWrapper(raw, newline="")
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        for line in f:
            user, item, rating, _ = line.split("\t")
            writer.writerow([int(int(rating) >= 4), rating, user, item, *users[user],
                             *items[item]])
            rows += 1
        out.flush()
        out.detach()  # output_stream closes and renames the file
    return rows


AGES = (18, 25, 35, 45, 50, 56)  # u.user's age groups (MovieLens 1M's bands)
FFM_FIELDS = ("user", "item", "age", "gender", "occupation", "genres")


def write_libffm(directory: str | Path, ratings: str, output: str | Path,
                 binary: bool = True) -> int:
    """Write ``output`` as libffm for an FM or FFM: one row per rating, label 1 for a rating
    of 4 or 5 (``binary``) or the rating, and the fields of :data:`FFM_FIELDS` — user id, item
    id, age band, gender, occupation, and the item's genres (one feature each, value 1/number of
    genres). Feature ids are one space: users, then items, ages, genders, occupations, genres.
    Returns the row count."""
    directory = Path(directory)
    users, items = _users(directory), _items(directory)
    occupations = sorted({u[2] for u in users.values()})
    n_users, n_items = len(users), len(items)
    offsets = np.cumsum([0, n_users, n_items, len(AGES) + 1, 2, len(occupations)])
    rows = 0
    with open(directory / ratings) as f, files.output_stream(output) as out:
        for line in f:
            user, item, rating, _ = line.split("\t")
            age, gender, occupation, _ = users[user]
            genres = [GENRES.index(g) for g in items[item][1].split("|") if g]
            label = int(int(rating) >= 4) if binary else int(rating)
            tokens = [f"0:{int(user) - 1}:1", f"1:{offsets[1] + int(item) - 1}:1",
                      f"2:{offsets[2] + int(np.searchsorted(AGES, int(age), 'right'))}:1",
                      f"3:{offsets[3] + (gender == 'F')}:1",
                      f"4:{offsets[4] + occupations.index(occupation)}:1"]
            tokens += [f"5:{offsets[5] + g}:{1 / len(genres):.6g}" for g in genres]
            out.write(f"{label} {' '.join(tokens)}\n".encode())
            rows += 1
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", help="the MovieLens 100k directory (u.data, u.user, ...)")
    parser.add_argument("output", help="directory for the joined CSV files")
    parser.add_argument("--splits", nargs="+", default=["ua.base", "ua.test"])
    args = parser.parse_args(argv)
    for split in args.splits:
        rows = join_ratings(args.directory, split, Path(args.output) / f"{split}.csv")
        print(f"{Path(args.output) / f'{split}.csv'}: {rows} rows")


if __name__ == "__main__":
    main()
