"""Top-10 quality on implicit feedback: fmkit's FM on sampled pairs beside LightFM, as ratios.

    python benchmarks/bench_recommend_quality.py [--epochs 10] [--factors 32]

MovieLens 100k as implicit feedback: what each user rated in ``ua.base`` is what they chose;
the relevant items are their ``ua.test`` items rated 4 or 5 (934 users have one); each user's
``ua.base`` items are excluded from their recommendations. Every model's 10 best items per user
are scored by the same code (:func:`fmkit.ranking_metrics`): precision, recall, NDCG, MRR and
hit rate at 10 (LightFM's ``precision_at_k``/``recall_at_k`` give the same first two), and
the AUC of each user's relevant items against every other unseen item, averaged over the users:
``fmkit recommend evaluate``'s ``auc`` for fmkit, LightFM's own ``auc_score`` (training
interactions left out) for LightFM, scikit-learn's ``roc_auc_score`` for popularity.

* the most popular unseen items (counting ratings 4 and 5 in ``ua.base``);
* fmkit: ``fmkit recommend pairs`` (4 sampled negatives per interaction), ``fmkit train`` (an
  FM classifier, user and item one-hot; SageMaker's defaults but ``num_factors`` and
  ``epochs``, then with Adam at batch 256 and every rate 0.003), ``fmkit recommend
  evaluate``'s lists; and ``fmkit train --interactions`` (the negatives drawn anew every
  epoch) with the second settings;
* LightFM 1.17 (``benchmarks/.peers``), WARP and BPR losses, the same factor count and epochs,
  one thread.

Prints each row's metrics, training seconds (fmkit: the ``pairs`` and ``train`` processes,
start-up and parsing included; LightFM: its ``fit`` alone) and the ratios of precision and
NDCG to LightFM WARP's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_fm import PEER_PYTHON, ensure_peers  # noqa: E402

import fmkit  # noqa: E402

DATA = HERE.parent.parent / "shared" / "data" / "movielens_100k"
USERS, ITEMS, K = 943, 1682, 10
NAMES = ("precision", "recall", "ndcg", "mrr", "hit_rate")


def split() -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, int]]:
    """0-based (user -> items chosen in ua.base), (user -> ua.test items rated >= 4) and
    each item's count of ratings >= 4 in ua.base."""
    seen: dict[int, list[int]] = {}
    liked: dict[int, int] = {}
    for line in (DATA / "ua.base").read_text().splitlines():
        user, item, rating, _ = map(int, line.split("\t"))
        seen.setdefault(user - 1, []).append(item - 1)
        liked[item - 1] = liked.get(item - 1, 0) + (rating >= 4)
    held: dict[int, list[int]] = {}
    for line in (DATA / "ua.test").read_text().splitlines():
        user, item, rating, _ = map(int, line.split("\t"))
        if rating >= 4:
            held.setdefault(user - 1, []).append(item - 1)
    return seen, held, liked


def metrics(top: dict[int, list[int]], held: dict[int, list[int]]) -> dict[str, float]:
    users = sorted(held)
    return fmkit.ranking_metrics([np.asarray(top[u]) for u in users],
                                 [np.asarray(held[u]) for u in users], K)


def popularity_auc(liked: dict[int, int], seen: dict, held: dict) -> float:
    """The mean over the users of scikit-learn's AUC of popularity scores of unseen items."""
    from sklearn.metrics import roc_auc_score

    counts = np.array([liked.get(i, 0) for i in range(ITEMS)], np.float64)
    aucs = []
    for user, items in held.items():
        unseen = np.setdiff1d(np.arange(ITEMS), seen[user])
        labels = np.isin(unseen, items)
        if 0 < labels.sum() < labels.size:
            aucs.append(roc_auc_score(labels, counts[unseen]))
    return float(np.mean(aucs))


def fmkit_top(work: Path, seen: dict, held: dict, args: argparse.Namespace, hp: list[str],
              redrawn: bool = False) -> tuple[dict[int, list[int]], float, float]:
    """Pairs (or, ``redrawn``, ``train --interactions``), training and the top 10 by the
    CLI; the seconds of pairs and training; ``fmkit recommend evaluate``'s auc."""
    files = {"users": [{"id": u, "keys": [u]} for u in range(USERS)],
             "items": [{"id": i, "keys": [USERS + i]} for i in range(ITEMS)],
             "seen": [{"id": u, "items": items} for u, items in seen.items()],
             "held": [{"id": u, "items": items} for u, items in held.items()]}
    for name, rows in files.items():
        (work / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fm = [sys.executable, "-m", "fmkit"]
    model = work / f"model-{len(list(work.glob('model-*')))}"
    pairs = model.with_suffix(".svm")
    started = time.perf_counter()
    settings = [f"feature_dim={USERS + ITEMS}", f"num_factors={args.factors}",
                "predictor_type=binary_classifier", f"epochs={args.epochs}", *hp]
    if redrawn:
        subprocess.run([*fm, "train", "--quiet", "--interactions", work / "seen.jsonl",
                        "--context", work / "users.jsonl", "--items", work / "items.jsonl",
                        "--negatives", "4", "--model-dir", model, *settings], check=True)
    else:
        subprocess.run([*fm, "recommend", "pairs", "--quiet", "--context",
                        work / "users.jsonl", "--items", work / "items.jsonl",
                        "--interactions", work / "seen.jsonl", "--negatives", "4",
                        "--output", pairs], check=True)
        subprocess.run([*fm, "train", "--quiet", "--index-base", "0", "--train", pairs,
                        "--model-dir", model, *settings], check=True)
    seconds = time.perf_counter() - started
    found = model.with_suffix(".jsonl")
    subprocess.run([*fm, "recommend", "--quiet", "--model-dir", model, "--items",
                    work / "items.jsonl", "--context", work / "users.jsonl", "--exclude",
                    work / "seen.jsonl", "--k", str(K), "--output", found], check=True)
    top = {}
    for line in found.read_text().splitlines():
        answer = json.loads(line)
        top[answer["id"]] = answer["items"]
    evaluated = subprocess.run(
        [*fm, "recommend", "evaluate", "--quiet", "--model-dir", model, "--items",
         work / "items.jsonl", "--context", work / "users.jsonl", "--exclude",
         work / "seen.jsonl", "--relevant", work / "held.jsonl", "--k", str(K)],
        check=True, capture_output=True, text=True)
    return top, seconds, json.loads(evaluated.stdout)["auc"]


def lightfm_top(work: Path, seen: dict, held: dict, loss: str, args: argparse.Namespace
                ) -> tuple[dict[int, list[int]], float, float]:
    train, test = work / "lightfm-train.txt", work / "lightfm-test.txt"
    train.write_text("".join(f"{u} {i}\n" for u, items in seen.items() for i in items))
    test.write_text("".join(f"{u} {i}\n" for u, items in held.items() for i in items))
    out = work / f"lightfm-{loss}.json"
    subprocess.run([str(PEER_PYTHON), str(HERE / "peer_lightfm.py"), str(train), str(test),
                    str(USERS), str(ITEMS), loss, str(args.epochs), str(args.factors), str(K),
                    str(out)], check=True)
    found = json.loads(out.read_text())
    return ({int(u): items for u, items in found["top"].items()}, found["seconds"],
            found["auc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--factors", type=int, default=32)
    args = parser.parse_args()
    ensure_peers()
    seen, held, liked = split()
    popular = sorted(liked, key=lambda i: (-liked[i], i))
    rows = {"most popular unseen": ({u: [i for i in popular if i not in set(seen[u])][:K]
                                     for u in held}, 0.0, popularity_auc(liked, seen, held))}
    with tempfile.TemporaryDirectory(prefix="bench-recommend-quality-") as tmp:
        work = Path(tmp)
        rows["fmkit FM on pairs, SageMaker's defaults"] = fmkit_top(work, seen, held, args, [])
        tuned = ["mini_batch_size=256", "bias_lr=0.003", "linear_lr=0.003", "factors_lr=0.003"]
        rows["fmkit FM on pairs, Adam b256 rates 0.003"] = fmkit_top(work, seen, held, args,
                                                                     tuned)
        rows["fmkit --interactions, the same settings"] = fmkit_top(work, seen, held, args,
                                                                    tuned, redrawn=True)
        for loss in ("warp", "bpr"):
            rows[f"LightFM {loss.upper()}"] = lightfm_top(work, seen, held, loss, args)
    scored = {name: (metrics(top, held), seconds, auc)
              for name, (top, seconds, auc) in rows.items()}
    anchor = scored["LightFM WARP"]
    print(f"MovieLens 100k implicit, {len(held)} users, k={K}, {args.factors} factors, "
          f"{args.epochs} epochs")
    header = "".join(f"{name + '@10':>13}" for name in NAMES)
    print(f"{'model':<42}{header}{'AUC':>8}{'train s':>9}   ratio to LightFM WARP "
          "(precision, NDCG, AUC)")
    for name, (values, seconds, auc) in scored.items():
        cells = "".join(f"{values[f'{m}_at_{K}']:>13.4f}" for m in NAMES)
        ratios = (f"{values[f'precision_at_{K}'] / anchor[0][f'precision_at_{K}']:.2f}x, "
                  f"{values[f'ndcg_at_{K}'] / anchor[0][f'ndcg_at_{K}']:.2f}x, "
                  f"{auc / anchor[2]:.3f}x")
        print(f"{name:<42}{cells}{auc:>8.4f}{seconds:>9.1f}   {ratios}")

if __name__ == "__main__":
    main()
