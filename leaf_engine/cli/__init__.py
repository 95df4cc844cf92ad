"""The ``leaf`` command line. Each group of subcommands lives in its own module and registers on ``app``.

Errors never show a traceback unless ``--debug`` is given: a request error exits 2 and lists every problem.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import typer

from .. import __version__
from ..errors import LeafError, RequestError
from ._app import app, console_err

# Subcommand modules; each registers its commands on `app` when imported.
_COMMAND_MODULES = ("request_cmds", "sl2p_cmds", "produce_cmds", "gee_cmds", "service_cmds")


CREDENTIALS_HINT = (
    "To use Google Cloud: run `gcloud auth application-default login` (or set GOOGLE_APPLICATION_CREDENTIALS to a "
    "service-account key file) and GOOGLE_CLOUD_PROJECT.\nTo use the local emulators instead: start "
    "`.venv/bin/python -m tests.support.emulators` and paste the `export` lines it prints "
    "(PUBSUB_EMULATOR_HOST, STORAGE_EMULATOR_HOST, GOOGLE_CLOUD_PROJECT).")


def _load_commands() -> None:
    for name in _COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``leaf`` console script. Returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if args in (["--version"], ["-V"]):
        print(f"leaf {__version__}")
        return 0
    _load_commands()
    try:
        # standalone mode: Typer/Click print usage errors themselves and exit via SystemExit
        app(args=args, prog_name="leaf", standalone_mode=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except RequestError as e:
        if debug:
            traceback.print_exc()
        console_err.print(str(e), markup=False, highlight=False)
        return 2
    except LeafError as e:
        if debug:
            traceback.print_exc()
        console_err.print(f"error: {e}", markup=False, highlight=False)
        return 1
    except Exception as e:  # anything unplanned: one line, the traceback only on request
        if debug:
            traceback.print_exc()
        elif type(e).__name__ == "DefaultCredentialsError":  # google.auth's, without importing it here
            console_err.print(f"error: no Google Cloud credentials ({e}).\n" + CREDENTIALS_HINT,
                              markup=False, highlight=False)
        else:
            console_err.print(
                f"unexpected error: {type(e).__name__}: {e} (run again with --debug for the traceback)",
                markup=False,
                highlight=False,
            )
        return 1


__all__ = ["app", "main", "typer"]
