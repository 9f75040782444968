"""What several test modules share, so that no ``test_*.py`` imports another (tests/test_house.py checks it).

- ``specs``: a mantik.yaml per backend type (``slurm_spec``, ``firecrest_spec``, ``unicore_spec``) and a Mantik
  compute-backend config (``FULL_MANTIK_CONFIG``);
- ``slurm``: the test run's own Slurm, as a test module uses it (the ``slurm`` fixture, ``squeue_state``);
- ``project``: steps on a ``conftest.Project`` (``settle``, ``dvc``, ``peak_rss_kib``);
- ``sshd``: a real sshd on 127.0.0.1 in front of this machine, the login node of the Slurm-over-SSH tests (the
  ``sshd`` fixture, ``Sshd`` counting logins and commands, ``ssh_spec``);
- ``mlflow_server``: a real ``mlflow server`` (``MlflowServer``); ``trials``: parallel applies (``check_trials``);
- ``planning``: the planner's inputs as plain data (``point``, ``desired``);
- ``fake_backend``: an in-memory ``Backend`` (``FakeBackend``), for apply's rules without processes.

Fixtures every module may use live in tests/conftest.py; a module takes a fixture from here by importing it.
"""
