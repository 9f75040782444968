"""The mlflow-export-import leg of bench/bench_sync.py, run by a Python that has that package (it is not a
dependency of mantik-spec; its 1.2.0 release needs ``tabulate``, which it does not declare):

    pip install mlflow==3.17.2 mlflow-export-import tabulate

Each journal's run is exported from its sqlite store with ``RunExporter.export_run`` and imported into the
server with ``RunImporter.import_run``, the package's way of copying a run to another tracking server; then
imported a second time, as a retried copy would be. It reads a JSON object on stdin (``server``: the tracking
URI, ``experiment``: the experiment to import into, ``journals``: [[database path, run id], ...], ``directory``:
where the exports go) and prints, as its last line, a JSON object of its figures. HTTP requests are counted at
``requests.Session.request`` (:func:`count_requests`), through which MLflow's REST client sends every call.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time


def count_requests() -> list[int]:
    """A counter of the HTTP requests this process sends from now on: MLflow's REST client sends every call
    through ``requests.Session.request`` (bench/bench_sync.py counts its sync the same way)."""
    import requests

    sent = [0]
    send = requests.Session.request

    def counted(self, *args, **kwargs):
        sent[0] += 1
        return send(self, *args, **kwargs)

    requests.Session.request = counted  # type: ignore[method-assign]
    return sent


def main() -> None:
    job = json.load(sys.stdin)
    os.environ["MLFLOW_TRACKING_URI"] = job["server"]  # the package makes clients of its own at import time
    quiet = io.StringIO()  # the package prints a few lines per run
    with contextlib.redirect_stdout(quiet):
        import logging

        from mlflow.tracking import MlflowClient
        from mlflow_export_import.run.export_run import RunExporter
        from mlflow_export_import.run.import_run import RunImporter

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        requests_made = count_requests()
        exports = []
        started = time.perf_counter()
        for database, run_id in job["journals"]:
            output = os.path.join(job["directory"], run_id)
            if not RunExporter(MlflowClient(tracking_uri=f"sqlite:///{database}")).export_run(run_id, output):
                raise SystemExit(f"export of run {run_id} failed: {quiet.getvalue()[-2000:]}")
            exports.append(output)
        export_seconds = time.perf_counter() - started

        server = MlflowClient(tracking_uri=job["server"])
        importer = RunImporter(server)
        figures = {"export_seconds": round(export_seconds, 3)}
        for attempt in ("import", "second_import"):
            before = requests_made[0]
            started = time.perf_counter()
            imported = [importer.import_run(job["experiment"], output)[0].info.run_id for output in exports]
            figures[f"{attempt}_seconds"] = round(time.perf_counter() - started, 3)
            figures[f"{attempt}_requests"] = requests_made[0] - before
            experiment = server.get_experiment_by_name(job["experiment"])
            assert experiment is not None  # the import made it
            figures[f"runs_after_{attempt}"] = len(server.search_runs([experiment.experiment_id], max_results=50000))
        figures["points_per_imported_run"] = len(server.get_metric_history(imported[-1], "loss"))
        copy, (database, run_id) = server.get_run(imported[-1]).info, job["journals"][-1]
        source = MlflowClient(tracking_uri=f"sqlite:///{database}").get_run(run_id).info
        figures["start_time_kept"] = copy.start_time == source.start_time
        figures["end_time_kept"] = copy.end_time == source.end_time
        figures["new_run_ids"] = not set(imported) & {run_id for _, run_id in job["journals"]}
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
