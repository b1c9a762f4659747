"""Exceptions with messages meant for the person running hardneg (the CLI prints them without a traceback)."""

from __future__ import annotations


class HardnegError(Exception):
    """Base class: a problem the user can fix; the CLI prints the message and exits non-zero."""


class DataFormatError(HardnegError):
    """A malformed input file (bad JSON line, missing column, wrong delimiter, bad encoding...)."""

    def __init__(self, path: str, message: str, line: int | None = None):
        self.path, self.line, self.detail = str(path), line, message
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class DataValidationError(HardnegError):
    """Well-formed data that fails one or more validation checks; ``summary`` is the report (``to_dict()``)."""

    def __init__(self, message: str, summary: dict | None = None):
        self.summary = summary
        super().__init__(message)


class ModelNotFoundError(HardnegError):
    """A model name or path that cannot be resolved offline."""


class ConfigError(HardnegError):
    """Invalid params.yaml / CLI configuration."""


class GateFailedError(HardnegError):
    """A quality or parity gate failed (export, pipeline)."""


class ArtifactError(HardnegError):
    """A stage output that is incomplete or corrupt (a file missing or not matching its checksum)."""


class DiskFullError(HardnegError):
    """A write failed for lack of space (ENOSPC, EDQUOT, or EFBIG from a file size limit)."""
