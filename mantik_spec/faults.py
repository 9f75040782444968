"""Fault points for tests: ``MANTIK_TEST_CRASH_AT=NAME`` kills the process at ``checkpoint(NAME)``;
``MANTIK_TEST_PAUSE_AT=NAME:SECONDS`` makes it wait there (for a test to stop a server meanwhile).

This is how the reliability tests stop an apply at an exact step of
submission instead of relying on sleeps and luck. Unset, it costs two lookups.
"""

import os
import signal
import time

CRASH_VARIABLE = "MANTIK_TEST_CRASH_AT"
PAUSE_VARIABLE = "MANTIK_TEST_PAUSE_AT"


def checkpoint(name: str) -> None:
    if os.environ.get(CRASH_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_VARIABLE, "")
    if pause.rpartition(":")[0] == name:
        time.sleep(float(pause.rpartition(":")[2]))
