"""`plan --no-backends`, as the generated CI files run it on pull requests: a spec from a pull request may point
a backend at its author's server and name any variable as its password; such a plan contacts no backend, so no
credential reaches that server, and it still shows what apply would submit."""

from __future__ import annotations

import textwrap

from .conftest import BASIC_SPEC
from .support.listener import Listener


def pull_request_spec(
    port: int, username: str = "MANTIK_UNICORE_USERNAME", password: str = "MANTIK_UNICORE_PASSWORD"
) -> str:
    return BASIC_SPEC.replace(
        "backends:\n",
        "backends:\n"
        + textwrap.indent(
            textwrap.dedent(
                f"""\
                theirs:
                  type: unicore
                  url: http://127.0.0.1:{port}/SITE/rest/core
                  credentials: {{username_env: {username}, password_env: {password}}}
                """
            ),
            "  ",
        ),
    ).replace("entry_point: train\n", "entry_point: train\n    backend: theirs\n")


def test_a_plan_without_backends_sends_no_credential_to_the_server_a_spec_names(project):
    listener = Listener()
    try:
        project.write("mantik.yaml", pull_request_spec(listener.port))
        project.commit("a pull request pointing a backend elsewhere")
        secrets = {"MANTIK_UNICORE_USERNAME": "deploy", "MANTIK_UNICORE_PASSWORD": "s3cret-key-material"}
        planned = project.mantik("plan", "--no-backends", "--detailed-exitcode", check=2, env=secrets)
        assert "+ sweep[" in planned.stdout and "no backend was asked (--no-backends)" in planned.stdout
        assert listener.received == []
        # the same plan asking the backends does log in there: what the flag prevents is real
        project.mantik("plan", check=None, env=secrets)
        assert listener.received, "the plan that asks backends never reached the listener"
        refused = project.mantik("plan", "--no-backends", "--out", "plan.json", check=1, env=secrets)
        assert refused.stderr.startswith("Error: --out with --no-backends")
    finally:
        listener.close()


def test_a_spec_naming_any_other_variable_as_a_credential_is_refused_before_anything_is_sent(project):
    """Even a plan that asks the backends: a `*_env` field may name only the variables kept for its kind of
    credential (MANTIK_UNICORE_*, MANTIK_FIRECREST_*, MLFLOW_TRACKING_* / MANTIK_TRACKING_*), so a pull request
    cannot name the CI's SSH key or deploy token as the password its server receives."""
    listener = Listener()
    try:
        project.write("mantik.yaml", pull_request_spec(listener.port, "CI_DEPLOY_USER", "SSH_PRIVATE_KEY"))
        project.commit("a pull request naming the CI's own secrets")
        secrets = {"CI_DEPLOY_USER": "deploy", "SSH_PRIVATE_KEY": "-----BEGIN OPENSSH PRIVATE KEY-----"}
        refused = project.mantik("plan", check=1, env=secrets)
        assert "password_env: SSH_PRIVATE_KEY is not a variable kept for this credential" in refused.stderr
        assert "mantik.yaml:" in refused.stderr and "Traceback" not in refused.stderr
        assert listener.received == []
    finally:
        listener.close()
