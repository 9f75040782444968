"""`plan --no-backends`, as the generated CI files run it on pull requests: a spec from a pull request may point
a backend at its author's server and name any variable as its password; such a plan contacts no backend, so no
credential reaches that server, and it still shows what apply would submit."""

from __future__ import annotations

import textwrap

from .conftest import BASIC_SPEC
from .support.listener import Listener


def pull_request_spec(port: int) -> str:
    return BASIC_SPEC.replace(
        "backends:\n",
        "backends:\n"
        + textwrap.indent(
            textwrap.dedent(
                f"""\
                theirs:
                  type: unicore
                  url: http://127.0.0.1:{port}/SITE/rest/core
                  credentials: {{username_env: CI_DEPLOY_USER, password_env: CI_DEPLOY_KEY}}
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
        secrets = {"CI_DEPLOY_USER": "deploy", "CI_DEPLOY_KEY": "s3cret-key-material"}
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
