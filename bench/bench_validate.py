"""Validation speed: `mantik validate` against `check-jsonschema` on the same generated spec.

Both run as cold processes, as pre-commit runs them. Usage:

    python bench/bench_validate.py [--experiments 200] [--repeat 7]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import report, time_command  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def generate_spec(experiments: int) -> str:
    lines = [
        "version: 1",
        "project: bench",
        "entry_points:",
        "  train:",
        "    command: python train.py --lr {lr} --epochs {epochs} --batch {batch} --seed {seed}",
        "    parameters:",
        "      lr: float",
        "      epochs: {type: int, default: 10}",
        "      batch: {type: int, default: 32}",
        "      seed: {type: int, default: 0}",
        "backends:",
        "  local: {type: local, max_parallel: 4}",
        "  big: {type: local, max_parallel: 16}",
        "experiments:",
    ]
    for index in range(experiments):
        lines += [
            f"  exp{index:04d}:",
            "    entry_point: train",
            f"    backend: {'local' if index % 2 else 'big'}",
            f"    parameters: {{lr: [0.001, 0.01, 0.1], epochs: {10 + index % 5}, batch: [32, 64]}}",
            "    seeds: 3",
            "    retries: 1",
        ]
        if index % 10 == 9:
            lines.append(f"  exp{index:04d}b: {{extends: exp{index:04d}, parameters: {{epochs: 100}}, suspend: true}}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--experiments", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()

    bin_dir = Path(sys.executable).parent
    mantik = str(bin_dir / "mantik") if (bin_dir / "mantik").exists() else shutil.which("mantik")
    checker = (
        str(bin_dir / "check-jsonschema")
        if (bin_dir / "check-jsonschema").exists()
        else shutil.which("check-jsonschema")
    )
    if not mantik or not checker:
        sys.exit("install the project with its test extra: pip install -e '.[test]'")

    with tempfile.TemporaryDirectory() as directory:
        spec = Path(directory) / "mantik.yaml"
        spec.write_text(generate_spec(args.experiments))
        schema = str(ROOT / "schemas" / "mantik.schema.json")
        print(
            f"spec: {args.experiments} experiments, {spec.stat().st_size // 1024} KiB, {len(spec.read_text().splitlines())} lines; "
            f"median of {args.repeat} cold runs each"
        )
        help_time = time_command([mantik, "--help"], args.repeat)
        validate_time = time_command([mantik, "validate", "-C", directory], args.repeat)
        baseline = time_command([checker, "--schemafile", schema, str(spec)], args.repeat)
        python_start = time_command([sys.executable, "-c", "pass"], args.repeat)
    ok = report("mantik validate", validate_time, baseline, "check-jsonschema", 0.5)
    print(
        f"mantik --help: {help_time:.3f} s (target <= 0.25 s) {'ok' if help_time <= 0.25 else 'OVER TARGET'}; "
        f"bare interpreter start: {python_start:.3f} s"
    )
    return 0 if ok and help_time <= 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
