"""User-facing errors: one line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import atexit
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn


class KdflowError(Exception):
    """A problem the user can fix (bad params, missing data, wrong checkpoint).

    ``exit_code`` lets params mistakes exit 2 (like argparse) and the rest 1.
    """

    exit_code = 1


class ParamsError(KdflowError):
    """params.yaml is not valid: exit 2, like a command-line usage error."""

    exit_code = 2


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line on stderr and exit."""
    print(f"kdflow: error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def _exit_now() -> NoReturn:
    """End a finished stage process without Python's teardown of torch and MLflow (~1 s):
    every output is already written, renamed and logged. atexit handlers still run (DDP's
    process group is destroyed there); only the slow module-by-module teardown is skipped."""
    atexit._run_exitfuncs()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_main(main: Callable[[], object], exit_now: bool = False) -> None:
    """Run a stage's ``main`` turning user mistakes into one line and an exit code.

    Set ``KDFLOW_DEBUG=1`` to see the full traceback instead. ``exit_now`` (stage scripts):
    leave as soon as ``main`` returns.
    """
    if os.environ.get("KDFLOW_DEBUG"):
        main()
        return
    try:
        main()
        if exit_now:
            _exit_now()
    except KdflowError as exc:
        fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        fail("interrupted; re-run the stage to resume from the last checkpoint", 130)
    except PermissionError as exc:
        fail(f"cannot write {exc.filename}: permission denied; choose a writable location", 1)
    except OSError as exc:
        if exc.filename:
            fail(f"{exc.strerror}: {exc.filename}", 1)
        raise
