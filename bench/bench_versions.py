"""Data-version resolution: reading the md5 of N DVC-tracked sources from their .dvc files,
against dvc's own API loading the same outputs (`Repo(...).index.outs`), in one process.

Usage: python bench/bench_versions.py [--sources 200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import median_time  # noqa: E402

from mantik_spec.spec.model import DataSource  # noqa: E402
from mantik_spec.state.versions import data_version  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sources", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    dvc = str(Path(sys.executable).parent / "dvc")
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        subprocess.run(["git", "init", "-q"], cwd=root, check=True)
        subprocess.run([dvc, "init", "-q"], cwd=root, check=True)
        (root / "data").mkdir()
        paths = []
        for index in range(args.sources):
            (root / "data" / f"part{index:04d}.csv").write_text(f"x\n{index}\n")
            paths.append(f"data/part{index:04d}.csv")
        subprocess.run([dvc, "add", "-q", *paths], cwd=root, check=True)
        sources = {f"s{i}": DataSource(path=p) for i, p in enumerate(paths)}

        ours = median_time(lambda: [data_version(root, n, s) for n, s in sources.items()], args.repeat)

        from dvc.repo import Repo

        def through_dvc():
            with Repo(str(root)) as repo:
                return {str(out): out.hash_info.value for out in repo.index.outs}

        assert len(through_dvc()) == args.sources
        baseline = median_time(through_dvc, args.repeat)
    print(
        f"{args.sources} DVC-tracked sources: mantik {ours * 1000:.1f} ms ({ours / args.sources * 1e6:.0f} µs per source), "
        f"dvc API {baseline * 1000:.1f} ms; ratio {ours / baseline:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
