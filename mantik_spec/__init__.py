"""mantik-spec: GitOps for machine learning on HPC.

The package reads in the order data flows, on ``vocab`` (the words every layer
shares): ``spec`` (mantik.yaml to run points), ``state`` (git, MLflow, the
project lock), ``reconcile`` (the pure planner and the plan's renderings),
``backends`` (where runs execute), ``operations`` (one function per verb) and
``cli`` (argument parsing and printing only).
"""

__version__ = "0.1.0"
