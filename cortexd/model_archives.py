"""Unpacking model zips within limits, so that a small archive cannot fill the disk.

A zip states each member's unpacked size in its central directory, and Python's zipfile
never writes more than that size for a member (it stops there, and a member that would be
longer fails its CRC check). So the sum of the stated sizes bounds what unpacking writes, and
it is checked before a single byte is written:

- total unpacked size at most `max_unpacked_bytes` (default 16 GiB; `serve --max-model-unpacked`),
- unpacked size at most `max_ratio` times the archive's size (default 100; `serve
  --max-model-unpack-ratio`) once the total passes RATIO_FLOOR_BYTES (64 MiB): real models
  compress 1-10x, zip bombs 1,000x; small archives are never refused for their ratio,
- at most `max_members` files and folders (default 100,000), as for project snapshots.

Replicas unpack local zips themselves; they read the daemon's limits from the environment
(`LIMIT_ENV`), which the daemon sets for them (`ArchiveLimits.env`).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass

from cortexd.units import format_bytes

GIB = 1 << 30
MIB = 1 << 20
DEFAULT_MAX_UNPACKED = 16 * GIB
DEFAULT_MAX_RATIO = 100.0
DEFAULT_MAX_MEMBERS = 100_000
RATIO_FLOOR_BYTES = 64 * MIB

ENV_MAX_UNPACKED = "CORTEXD_MAX_MODEL_UNPACKED"
ENV_MAX_RATIO = "CORTEXD_MAX_MODEL_UNPACK_RATIO"


class ArchiveError(Exception):
    """The zip cannot be unpacked (unsafe, invalid or beyond a limit); str() says why."""


@dataclass(frozen=True)
class ArchiveLimits:
    max_unpacked_bytes: int = DEFAULT_MAX_UNPACKED
    max_ratio: float = DEFAULT_MAX_RATIO
    max_members: int = DEFAULT_MAX_MEMBERS

    def env(self) -> dict[str, str]:
        """The variables that give a replica these limits (for the spawner's extra_env)."""
        return {ENV_MAX_UNPACKED: str(self.max_unpacked_bytes), ENV_MAX_RATIO: repr(self.max_ratio)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ArchiveLimits:
        """The limits a replica was given; defaults for what is unset or unreadable."""
        limits = cls()
        try:
            size = int(environ.get(ENV_MAX_UNPACKED, "") or limits.max_unpacked_bytes)
            ratio = float(environ.get(ENV_MAX_RATIO, "") or limits.max_ratio)
        except ValueError:
            return limits
        return cls(max_unpacked_bytes=size, max_ratio=ratio)


def format_size(n: int) -> str:
    """A size with its exact byte count, for refusals a user may want to compare: "1.1 GiB (1,181,116,006 bytes)"."""
    return f"{n} B" if n < 1024 else f"{format_bytes(n)} ({n:,} bytes)"


def limit_problem(archive_bytes: int, unpacked_bytes: int, members: int, limits: ArchiveLimits) -> str | None:
    """Why an archive of this size, stating these unpacked bytes and members, is refused; or None."""
    if members > limits.max_members:
        return f"the zip holds {members:,} files and folders, more than the limit of {limits.max_members:,}"
    if unpacked_bytes > limits.max_unpacked_bytes:
        return (
            f"the zip would unpack to {format_size(unpacked_bytes)}, more than the limit of "
            f"{format_size(limits.max_unpacked_bytes)} (serve --max-model-unpacked)"
        )
    if unpacked_bytes > RATIO_FLOOR_BYTES:
        ratio = unpacked_bytes / max(archive_bytes, 1)
        if ratio > limits.max_ratio:
            return (
                f"the zip would unpack to {ratio:,.0f} times its size ({format_size(archive_bytes)} -> "
                f"{format_size(unpacked_bytes)}), more than the limit of {limits.max_ratio:g} times "
                "(serve --max-model-unpack-ratio); is it a zip bomb?"
            )
    return None


def unsafe_member(name: str) -> bool:
    """A member that would land outside the folder it is unpacked into."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(parts[0]) == 2 and parts[0][1] == ":")


def extract(archive: str, dest: str, shown: str, limits: ArchiveLimits) -> int:
    """Unpack `archive` into `dest` within `limits`; the number of files. Raises ArchiveError."""
    try:
        archive_bytes = os.path.getsize(archive)
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if not m.filename.startswith("__MACOSX/")]
            for m in members:
                if unsafe_member(m.filename):
                    raise ArchiveError(f"{shown}: the zip holds an unsafe path {m.filename!r}")
            problem = limit_problem(archive_bytes, sum(m.file_size for m in members), len(members), limits)
            if problem:
                raise ArchiveError(f"{shown}: {problem}")
            zf.extractall(dest, members)
            return sum(1 for m in members if not m.is_dir())
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"{shown}: not a valid zip file ({exc})") from None
