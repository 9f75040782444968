"""Crash points for tests: ``MANTIK_TEST_CRASH_AT=NAME`` kills the process at ``checkpoint(NAME)``.

This is how the crash-safety tests stop an apply at an exact step of
submission instead of relying on sleeps and luck. Unset, it costs one lookup.
"""

import os
import signal

CRASH_VARIABLE = "MANTIK_TEST_CRASH_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
