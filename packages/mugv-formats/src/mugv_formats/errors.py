"""Errors raised by mugv-formats readers and writers.

Every error is a ``ValueError`` subclass whose message names the file (and, inside a shard, the
member) and the offending field or value, so a user can find the bad input without a debugger.
"""

from __future__ import annotations


class FormatError(ValueError):
    """Base class: an on-disk dataset, shard or checkpoint is not what the contract says."""


class VersionError(FormatError):
    """A file carries a format name or version this reader cannot load."""


class ChecksumError(FormatError):
    """A stored checksum does not match the bytes read back."""


class CorruptShardError(FormatError):
    """A shard is truncated, unreadable, or holds a member it must not hold."""


class MissingFieldError(FormatError):
    """A record or header lacks a required field, or a field has an invalid value."""
