"""Command-line latency: how long a cold `vitsearch search` process takes, end to end.

1,000 catalogue photos are indexed with the real model (dinov2-small-9l, the CPU default runtime
onnx-int8) into a temporary Milvus Lite database (or ``--uri DB`` reuses one this script made);
then each source tree is timed, in fresh processes run one after another:

- ``search IMG``: a catalogue photo as the query (p50 and p90 of ``--runs``, default 10);
- ``search nope.jpg``: a query file that does not exist (p50), the answer before any model or
  Milvus is loaded;
- ``search --help``.

Each tree is run as ``python -c "from vitsearch.cli import main; main()"`` (what the
``vitsearch`` script runs) with ``PYTHONPATH`` set to a shim folder whose ``vitsearch`` package
maps to that tree's folders (``search/``, ``cli/``...), so two trees are timed by the same
interpreter and packages on the same machine in the same run:

    git worktree add /tmp/cli-before <commit>
    python benchmarks/cli_latency.py --before /tmp/cli-before [--uri DB] [--runs 10]

The ONNX export is made once by the indexing (cached), as a user's first `vitsearch index` makes it;
one warm-up search per tree precedes the timed ones (the OS file cache). Not a test: run by hand,
report the table.

Figures: docs/benchmarks/cli-latency.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITSEARCH_SHARED", REPO.parent / "shared"))
PACKAGES = ("search", "indexer", "cli", "ui", "train", "api")
GOALS = {"search IMG": 1.5, "search nope.jpg": 0.5}


def shim(tree: Path, into: Path) -> Path:
    """A folder for ``PYTHONPATH`` whose ``vitsearch`` package is ``tree``'s code."""
    package = into / "vitsearch"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for name in PACKAGES:
        if (tree / name).is_dir():
            (package / name).symlink_to(tree / name)
    return into


def run(pythonpath: Path, args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    """Seconds of wall time of one fresh ``vitsearch ARGS`` process of the tree at ``pythonpath``."""
    env = {**env, "PYTHONPATH": str(pythonpath)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", "from vitsearch.cli import main; main()", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return time.perf_counter() - started, done


def build_database(uri: str, model: str, n: int, workdir: Path, env: dict) -> None:
    """Index the first ``n`` catalogue photos (links to them in one folder) into ``uri``."""
    photos = sorted((SHARED / "data" / "catalog").glob("*.jpg"))[:n]
    folder = workdir / "photos"
    folder.mkdir(exist_ok=True)
    for p in photos:
        if not (folder / p.name).is_symlink():
            (folder / p.name).symlink_to(p)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vitsearch.cli import main; main()",
            "index",
            str(folder),
            "--model",
            model,
            "--uri",
            uri,
            "--runtime",
            "onnx-int8",
        ],
        env=env,
        text=True,
        capture_output=True,
        timeout=3600,
    )
    if done.returncode != 0:
        sys.exit(f"indexing failed: {done.stderr.strip()[-2000:]}")
    print(f"indexed {len(photos)} photos into {uri} in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--uri",
        help="a Milvus Lite database this script made before, or where to make one "
        "that is kept (default: a new one in a temporary folder)",
    )
    parser.add_argument("--before", type=Path, help="another source tree (a git worktree) to time as well")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env.setdefault("VITSEARCH_DATA_DIR", str(tmp / "data"))  # no `vitsearch server start` of the user's
        uri = args.uri or str(tmp / "bench.db")
        if not os.path.exists(uri):
            build_database(uri, args.model, args.photos, Path(uri).parent if args.uri else tmp, env)
        query = str(sorted((SHARED / "data" / "catalog").glob("*.jpg"))[-1])  # past the first 1,000: not indexed
        trees = {"after": REPO} if args.before is None else {"before": args.before.resolve(), "after": REPO}
        cases = {
            "search IMG": ["search", query, "--uri", uri],
            "search nope.jpg": ["search", str(tmp / "nope.jpg"), "--uri", uri],
            "search --help": ["search", "--help"],
        }
        times: dict[tuple[str, str], list[float]] = {}
        paths = {name: shim(tree, tmp / f"shim-{name}") for name, tree in trees.items()}
        for name, path in paths.items():  # warm-up: the file cache, and the ONNX export of an older tree
            _, done = run(path, cases["search IMG"], env)
            if done.returncode != 0:
                sys.exit(f"{name}: search failed: {done.stderr.strip()[-2000:]}")
        for _ in range(args.runs):  # interleaved: load on the machine hits both trees alike
            for case, argv in cases.items():
                for name, path in paths.items():
                    seconds, done = run(path, argv, env)
                    if case == "search nope.jpg":
                        assert done.returncode == 2, (name, done.stderr[-1000:])
                    elif done.returncode != 0:
                        sys.exit(f"{name}: {case} failed: {done.stderr.strip()[-2000:]}")
                    times.setdefault((case, name), []).append(seconds)
    print(
        f"cold `vitsearch` processes, {args.runs} runs each, {os.cpu_count()} CPUs, Milvus Lite, "
        f"{args.photos} photos, {Path(args.model).name} onnx-int8\n"
    )
    head = (
        "| command | "
        + " | ".join(f"{n} p50 s | {n} p90 s" for n in trees)
        + (" | after / before (p50) |" if len(trees) == 2 else " |")
        + " goal p50 s |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for case in cases:
        cells = []
        for name in trees:
            t = sorted(times[(case, name)])
            cells += [f"{statistics.median(t):.2f}", f"{t[min(len(t) - 1, round(0.9 * (len(t) - 1)))]:.2f}"]
        ratio = ""
        if len(trees) == 2:
            ratio = f" {statistics.median(times[(case, 'after')]) / statistics.median(times[(case, 'before')]):.2f} |"
        goal = GOALS.get(case)
        print(f"| {case} | " + " | ".join(cells) + " |" + ratio + f" {goal if goal else '-'} |")


if __name__ == "__main__":
    main()
