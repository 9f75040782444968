"""Helpers shared by the bench scripts: timing cold processes and printing ratios."""

from __future__ import annotations

import statistics
import subprocess
import time


def time_command(argv: list[str], repeat: int, cwd=None, env=None) -> float:
    """Median wall time of a cold process (a new interpreter each time)."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def report(name: str, measured: float, baseline: float, baseline_name: str, target: float) -> bool:
    ratio = measured / baseline
    verdict = "ok" if ratio <= target else "OVER TARGET"
    print(
        f"{name}: {measured:.3f} s   {baseline_name}: {baseline:.3f} s   ratio {ratio:.2f} (target <= {target}) {verdict}"
    )
    return ratio <= target


def median_time(function, repeat: int) -> float:
    """Median wall time of ``function()`` in this process."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        function()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)
