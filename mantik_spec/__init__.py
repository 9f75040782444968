"""mantik-spec: GitOps for machine learning on HPC.

The package reads in the order data flows, on ``vocab`` (the words every layer
shares): ``spec`` (mantik.yaml to run points), ``reconcile`` (run identity, the
pure planner and the plan as data), ``state`` (git, MLflow, the project lock),
``backends`` (where runs execute), ``operations`` (one function per verb),
``views`` (what the commands draw) and ``cli`` (argument parsing and printing
only). ``tests/test_house.py`` holds each layer to importing only those below it.
"""

__version__ = "0.1.0"
