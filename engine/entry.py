"""How the entry scripts end on bad input: one line on stderr, exit code 2, no
traceback (set UVC_DEBUG=1 to see the traceback)."""
import os
import sys

from data import DataError
from models.checkpoint import CheckpointError
from utils.checkpoint import ResumeError
from utils.config import ConfigError
from engine.build import OutputDirError
from engine.loop import NonFiniteLossError

USER_ERRORS = (ConfigError, DataError, CheckpointError, ResumeError, OutputDirError, NonFiniteLossError,
               ValueError)


def run_entry(main, argv) -> None:
    try:
        main(argv)
    except USER_ERRORS as e:
        if os.environ.get("UVC_DEBUG"):
            raise
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
