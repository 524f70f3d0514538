"""Errors a user can cause, each with the exit code the command line ends with.

Every error here is reported as one line (``error: <what is wrong>; <what to do>``) and never
as a traceback. A traceback from cifar-resnet is a bug.
"""

from __future__ import annotations

# Exit codes, documented in the README's troubleshooting section.
EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug: please report it
EXIT_USAGE = 2  # bad command line or config (argparse uses 2 as well)
EXIT_DATA = 3  # the dataset is missing, unreadable or inconsistent
EXIT_CHECKPOINT = 4  # a checkpoint is missing, corrupt, unsafe or does not match the run
EXIT_OUTPUT = 5  # the output folder cannot be written (permissions, full disk)
EXIT_DIVERGED = 6  # the loss became NaN or infinite
EXIT_DISTRIBUTED = 7  # another rank failed or timed out
EXIT_LOCKED = 8  # the run folder is in use by another training process
EXIT_INTERRUPTED = 130  # stopped by SIGINT or SIGTERM after saving; resume with --resume
EXIT_PIPE = 141  # stdout closed by its reader (e.g. `| head`), as a program killed by SIGPIPE


class CifarResnetError(Exception):
    """An error caused by the user's input, printed as one line."""

    exit_code = EXIT_INTERNAL


class UsageError(CifarResnetError):
    exit_code = EXIT_USAGE


class DataError(CifarResnetError):
    exit_code = EXIT_DATA


class CheckpointError(CifarResnetError):
    exit_code = EXIT_CHECKPOINT


class OutputError(CifarResnetError):
    exit_code = EXIT_OUTPUT


class DivergedError(CifarResnetError):
    exit_code = EXIT_DIVERGED


class DistributedError(CifarResnetError):
    exit_code = EXIT_DISTRIBUTED


class RunLockedError(CifarResnetError):
    exit_code = EXIT_LOCKED


class Interrupted(CifarResnetError):
    exit_code = EXIT_INTERRUPTED


def require(module: str, extra: str):
    """Import an optional dependency, or fail with the pip command that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise UsageError(
            f"this needs the optional package {package}; install it with "
            f"pip install 'cifar-resnet[{extra}]'"
        ) from None
