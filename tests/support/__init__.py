"""What tests share that is not a test: fakes of the runtime seam, the API harness, helpers.

Fixtures over these live in the conftest modules (tests/unit/conftest.py)."""

from tests.support.api import assert_error
from tests.support.fakes import FakeProcess, FakeRuntime, FakeSocket, FakeVM
from tests.support.harness import Harness, make_settings
from tests.support.net import free_port
from tests.support.wait import WaitTimeout, async_wait_until, wait_until

__all__ = [
           "FakeProcess",
           "FakeRuntime",
           "FakeSocket",
           "FakeVM",
           "Harness",
           "WaitTimeout",
           "assert_error",
           "async_wait_until",
           "free_port",
           "make_settings",
           "wait_until",
]
