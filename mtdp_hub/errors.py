"""Every error this project raises on purpose derives from :class:`MtdpError`.

Each also keeps the built-in type callers caught before (``ValueError``, ``RuntimeError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working. The ``mtdp`` command and
``python -m training`` catch :class:`MtdpError` and print its one-line message (exit 2);
anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import os

__all__ = [
    'MtdpError',
    'CheckpointError',
    'WeightsNotFoundError',
    'HashMismatchError',
    'UnreadableImageError',
    'TaskFolderError',
    'FeatureFileError',
    'OutputExistsError',
    'UnsafeOutputError',
    'InputNotFoundError',
    'InvalidOptionError',
    'MissingDependencyError',
    'ModelFolderError',
    'HubUnreachableError',
    'ModelLoadError',
    'IncompleteEvaluationError',
]


class MtdpError(Exception):
    """Base of the errors that describe bad input or a missing resource (never a bug)."""


class CheckpointError(MtdpError, RuntimeError):
    """A weight file that cannot be read or does not fit the model; the message names file and keys."""


class WeightsNotFoundError(MtdpError, RuntimeError):
    """No source of a pretrained tag gave a usable weight file."""


class HashMismatchError(MtdpError, RuntimeError):
    """A weight file's SHA-256 differs from the one recorded for it."""


class UnreadableImageError(MtdpError, ValueError):
    """An image file could not be decoded; ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f'unreadable image {self.path}: {reason}')

    def __reduce__(self):  # picklable across DataLoader worker processes
        return (type(self), (self.path, self.reason))


class TaskFolderError(MtdpError, ValueError):
    """A task folder ``{root}/{split}/{class}/*`` that cannot be used; the message names it."""


class FeatureFileError(MtdpError, ValueError):
    """A features file that cannot be read or resumed; the message names the file."""


class OutputExistsError(MtdpError, FileExistsError):
    """An output that exists and would be replaced without ``--overwrite``."""


class UnsafeOutputError(MtdpError, ValueError):
    """An output folder that is, or holds, an input (a run, a checkpoint): replacing it would delete it."""


class InputNotFoundError(MtdpError, FileNotFoundError):
    """An input file or folder that does not exist."""


class InvalidOptionError(MtdpError, ValueError):
    """An option value outside its allowed set; the message names the option."""


class MissingDependencyError(MtdpError, ImportError):
    """An optional package that a feature needs is not installed; the message says which extra."""


class ModelFolderError(MtdpError, ValueError):
    """A folder that is not a complete exported model folder (or holds what must not be published)."""


class HubUnreachableError(MtdpError, ConnectionError):
    """The Hugging Face Hub's endpoint cannot be reached (no network, a firewall, a wrong HF_ENDPOINT)."""


class ModelLoadError(MtdpError, RuntimeError):
    """One or more models of a command could not be loaded; the message names each and why."""


class IncompleteEvaluationError(MtdpError, RuntimeError):
    """Some models failed during an evaluation; the report of those that finished was written."""
