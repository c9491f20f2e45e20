"""Run a test as a user that file modes apply to.

Root reads and writes any file whatever its mode (CAP_DAC_OVERRIDE), so a test of what happens when a
file cannot be read runs, under root, again in a child pytest that `setpriv` has stripped of every
capability: still uid 0 and owner of the test's files, but bound by their modes like any other user.
Elsewhere (a plain user) the test runs where it is.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHILD_MARK = "UNPRIVILEGED_TEST_CHILD"  # not JUKEBOT_…: `clean_env` removes those
Test = TypeVar("Test", bound=Callable[..., Any])
SetMode = Callable[[Path, int], None]


def modes_apply() -> bool:
    """Whether this process is refused a file of mode 000 (its own)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_bytes(b"x")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            return True
        return False


def _run_in_child() -> None:
    """Run the current test again in a pytest without capabilities; fail unless it passes there."""
    if os.environ.get(CHILD_MARK):
        pytest.fail("setpriv left this process able to read a file of mode 000")
    if os.geteuid() != 0:
        pytest.skip("file modes do not restrict this user here: a file of mode 000 could be read")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, which reads any file, and no setpriv (util-linux) to drop that")
    node_id = os.environ["PYTEST_CURRENT_TEST"].rsplit(" (", 1)[0]
    with tempfile.TemporaryDirectory(prefix="unprivileged-") as basetemp:
        command = [setpriv, "--inh-caps=-all", "--bounding-set=-all", sys.executable, "-m", "pytest"]
        command += ["-q", "-p", "no:cacheprovider", f"--basetemp={basetemp}/tmp", node_id]
        child = subprocess.run(
            command, cwd=ROOT, env={**os.environ, CHILD_MARK: "1"}, capture_output=True, text=True
        )
    report = child.stdout + child.stderr
    assert child.returncode == 0 and re.search(r"\b1 passed\b", child.stdout), report


def without_read_privileges(test: Test) -> Test:
    """Decorate a test that needs file modes to be enforced (see the module's docstring)."""
    if inspect.iscoroutinefunction(test):

        @functools.wraps(test)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            if modes_apply():
                return await test(*args, **kwargs)
            _run_in_child()

        return run_async  # type: ignore[return-value]

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        if modes_apply():
            return test(*args, **kwargs)
        _run_in_child()

    return run  # type: ignore[return-value]


@pytest.fixture
def set_mode() -> Iterator[SetMode]:
    """chmod, undone at the end of the test (so that the test's files can be removed)."""
    before: list[tuple[Path, int]] = []

    def change(path: Path, mode: int) -> None:
        before.append((path, path.stat().st_mode))
        path.chmod(mode)

    yield change
    for path, mode in reversed(before):
        path.chmod(mode)
