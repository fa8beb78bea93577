"""Errors a user can act on. Each carries the problem, the fix, and a documented exit code.

Exit codes (docs/cli.md):
    0    done
    1    failed: bad input file, a run that could not finish, an internal error
    2    usage: a bad option value, an empty prompt, an impossible size
    3    CLIP weights unavailable (offline or no network, nothing cached)
    4    out of resources: GPU out of memory, no disk space
    130  interrupted (Ctrl-C); training state is checkpointed, resume with --resume
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_WEIGHTS = 3
EXIT_RESOURCES = 4
EXIT_INTERRUPTED = 130


class T2LError(Exception):
    """A failure with a one-line explanation: what went wrong and how to fix it."""

    exit_code = EXIT_FAILED

    def __init__(self, problem: str, fix: str | None = None):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem


class InputError(T2LError):
    """An input file is missing, unreadable, corrupt or of the wrong kind."""


class UsageError(T2LError):
    """An option value that cannot work (empty prompt, impossible size...)."""

    exit_code = EXIT_USAGE


class WeightsUnavailable(T2LError):
    """CLIP weights are neither cached nor downloadable."""

    exit_code = EXIT_WEIGHTS


class ResourceError(T2LError):
    """Out of GPU memory or disk space."""

    exit_code = EXIT_RESOURCES


class Interrupted(T2LError):
    """The user pressed Ctrl-C; what could be saved was saved."""

    exit_code = EXIT_INTERRUPTED
