"""
The sqlite ledger's inbox journal: each delivery appended to a plain file with one ``write()``.

The webhook answers Alertmanager only once the notification is durable, so this
write is on every acknowledgement's path. A row through sqlite's writer thread
cost ~100 µs of CPU per notification (a commit, two thread hand-overs, the
futures); one ``write()`` costs a few µs. Measured again in one bench run
(bench/README.md, 6 Dec 2026), the journal kept 0.81 of a bare handler's
throughput against 0.36 for a row per notification through the group-committing
writer, and p99 4.8 ms against 7.4 ms at 1,000/s. The durability is
the same as the sqlite file's with ``synchronous=NORMAL``: once ``write()``
returned, the record is in the kernel's page cache and survives the agent
being killed; with ``synchronous=full`` each append is also ``fdatasync``-ed
(in a thread) before the acknowledgement, and survives a power loss too.

Only the agent process, which holds the ledger's lock, opens the journal: a
reader (``scaling-agent decisions``) never does, because opening it cuts off a
torn tail and deletes spent segments, which would pull the file out from under
a running agent. The worker reads the journal in order, and the sqlite ledger stores each
delivery's events together with the id of the last delivery unpacked, in one
transaction. That id is the journal's cursor: on open, records up to it are
skipped, and a segment whose every delivery is unpacked is deleted.

On disk: a directory of segments ``<first id, 20 digits>.journal``, each a run
of records: a header (payload length and CRC-32, both ``uint32``) and the
payload (delivery id ``uint64``, received-at ``float64`` seconds, source length
``uint16``, the source, the body). A record cut short or failing its checksum
(a write torn by a power loss) ends its segment; on open it is cut off there.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog

from agent.structs import Delivery

log = structlog.get_logger("agent.ledger.journal")

HEADER = struct.Struct("<II")  # payload length, CRC-32 of the payload
FIXED = struct.Struct("<QdH")  # delivery id, received at (epoch seconds), source length
SEGMENT_BYTES = 64 * 1024 * 1024
READ_CHUNK = 256 * 1024
SUFFIX = ".journal"


class JournalError(Exception):
    """The journal cannot take the append (closed, disk full): the caller must not acknowledge."""


@dataclass
class _Segment:
    path: Path
    first_id: int
    last_id: int  # first_id - 1 while empty
    size: int


class Journal:
    def __init__(self, directory: Path, *, fsync: bool = False, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the last segment's, for appends
        self._next_id = 1
        self._buffer: list[bytes] = []  # records added and not yet written: a header and a payload each
        self._unpacked_through = 0
        # Where the first delivery not yet unpacked starts, and where each delivery read since then ends.
        self._pending_at: tuple[int, int] = (0, 0)  # (segment first_id, offset)
        self._ends: dict[int, tuple[int, int]] = {}
        self.fault: str | None = None  # set when the file being appended to was deleted: no append can succeed

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    # --- open / close ------------------------------------------------------------------------------------

    def open(self, *, unpacked_through: int) -> None:
        """Scan the segments, cut off a torn tail, drop what is unpacked; appends continue after the last id."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self._unpacked_through = unpacked_through
        self._next_id = unpacked_through + 1
        self._segments = []
        pending_at: tuple[int, int] | None = None
        for path in sorted(self.directory.glob("*" + SUFFIX)):
            if not path.name.removesuffix(SUFFIX).isdigit():
                log.warning("not a journal segment; left alone", file=str(path))
                continue
            segment, pending = self._scan(path, after=unpacked_through)
            self._next_id = max(self._next_id, segment.last_id + 1)
            if segment.last_id <= unpacked_through:
                path.unlink()  # empty, or every delivery in it unpacked before the agent could delete it
                continue
            self._segments.append(segment)
            if pending_at is None and pending is not None:
                pending_at = (segment.first_id, pending)
        if not self._segments:
            self._segments.append(self._new_segment(self._next_id))
        last = self._segments[-1]
        self._fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._pending_at = pending_at or (last.first_id, last.size)
        self._ends = {}

    def _scan(self, path: Path, *, after: int) -> tuple[_Segment, int | None]:
        """The segment, cut off after its last whole record, and the offset of its first delivery past ``after``."""
        first_id = int(path.name.removesuffix(SUFFIX))
        data = path.read_bytes()
        size, last_id, pending = 0, first_id - 1, None
        for offset, delivery_id, end in _records(data):
            if pending is None and delivery_id > after:
                pending = offset
            size, last_id = end, delivery_id
        if size < len(data):
            log.warning("journal record torn or damaged; cut off", segment=path.name, offset=size)
            with open(path, "r+b") as file:
                file.truncate(size)
        return _Segment(path=path, first_id=first_id, last_id=last_id, size=size), pending

    def _new_segment(self, first_id: int) -> _Segment:
        path = self.directory / f"{first_id:020d}{SUFFIX}"
        path.touch(mode=0o600)
        return _Segment(path=path, first_id=first_id, last_id=first_id - 1, size=0)

    def _find_pending(self) -> tuple[int, int]:
        """The position of the first delivery after the cursor (reads the one segment it is in)."""
        for segment in self._segments:
            if segment.last_id > self._unpacked_through:
                data = segment.path.read_bytes()[: segment.size]
                for offset, delivery_id, _ in _records(data):
                    if delivery_id > self._unpacked_through:
                        return (segment.first_id, offset)
        last = self._segments[-1]
        return (last.first_id, last.size)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- append ------------------------------------------------------------------------------------------

    def add(self, *, source: str, body: bytes, received_at: float) -> int:
        """Buffer one delivery and give it its id; it is durable once :meth:`flush` returned."""
        if self._fd is None:
            raise JournalError("journal is not open")
        delivery_id = self._next_id
        self._next_id += 1
        source_bytes = source.encode()
        payload = FIXED.pack(delivery_id, received_at, len(source_bytes)) + source_bytes + body
        self._buffer.append(HEADER.pack(len(payload), zlib.crc32(payload)))
        self._buffer.append(payload)
        return delivery_id

    def flush(self) -> None:
        """Write what :meth:`add` buffered with one write(): webhook requests that come together share it."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        first_id = self._next_id - len(self._buffer) // 2
        self._buffer = []
        segment = self._segments[-1]
        try:
            if self._fd is None:
                raise OSError("journal is not open")
            if segment.size >= self.segment_bytes:
                self._roll(first_id)
                segment = self._segments[-1]
            if os.fstat(self._fd).st_nlink == 0:  # one fstat per shared write: never acknowledge into a lost file
                self.fault = f"segment {segment.path.name} was deleted while the agent was appending to it"
                raise OSError(self.fault)
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write: {written} of {len(data)} bytes")
        except OSError as exc:
            # Cut off whatever part reached the file, so that the next write starts clean; the ids are reused.
            self._next_id = first_id
            if self._fd is not None:
                try:
                    os.ftruncate(self._fd, segment.size)
                except OSError:
                    log.error("could not cut off a failed journal write", segment=segment.path.name)
            raise JournalError(f"journal write failed: {exc}") from exc
        segment.last_id = self._next_id - 1
        segment.size += len(data)

    def append(self, *, source: str, body: bytes, received_at: float) -> int:
        delivery_id = self.add(source=source, body=body, received_at=received_at)
        self.flush()
        return delivery_id

    def sync(self) -> None:
        """fdatasync the segment being appended to (for synchronous=full; call from a thread)."""
        if self._fd is not None:
            os.fdatasync(self._fd)

    def _roll(self, first_id: int) -> None:
        assert self._fd is not None
        if self.fsync:
            os.fdatasync(self._fd)
        os.close(self._fd)
        self._fd = None
        segment = self._new_segment(first_id)
        self._segments.append(segment)
        self._fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)

    # --- read and release --------------------------------------------------------------------------------

    def pending(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` deliveries after the cursor, oldest first (the same ones until they are unpacked)."""
        result: list[Delivery] = []
        first_id, offset = self._pending_at
        index = next((i for i, s in enumerate(self._segments) if s.first_id == first_id), None)
        if index is None:
            return result
        self._ends = {}
        while len(result) < limit and index < len(self._segments):
            segment = self._segments[index]
            if offset >= segment.size:
                index, offset = index + 1, 0
                continue
            with open(segment.path, "rb") as file:
                file.seek(offset)
                data = file.read(min(READ_CHUNK, segment.size - offset))
                if _parse(data, 0) is None:  # one record bigger than a chunk: read all of it
                    (length, _) = HEADER.unpack_from(data)
                    file.seek(offset)
                    data = file.read(HEADER.size + length)
            position = 0
            while len(result) < limit and position < len(data):
                record = _parse(data, position)
                if record is None:
                    break  # the rest is in the next chunk
                delivery_id, at, source, body, end = record
                result.append(
                    Delivery(id=delivery_id, source=source, body=body, received_at=datetime.fromtimestamp(at, UTC))
                )
                position = end
                self._ends[delivery_id] = (segment.first_id, offset + end)
            if position == 0:  # cannot happen after _scan checked the segment; never spin on it
                log.error("journal record unreadable; skipping the rest of its segment", segment=segment.path.name)
                index, offset = index + 1, 0
                continue
            offset += position
        return result

    def unpacked(self, through: int) -> None:
        """Every delivery up to ``through`` is unpacked (committed): move the cursor, delete spent segments."""
        if through <= self._unpacked_through:
            return
        self._unpacked_through = through
        while len(self._segments) > 1 and self._segments[0].last_id <= through:
            spent = self._segments.pop(0)
            spent.path.unlink(missing_ok=True)
        end = self._ends.get(through)
        if end is not None and any(s.first_id == end[0] for s in self._segments):
            self._pending_at = end
        else:  # its segment is spent, or it was not read through pending(): look it up
            self._pending_at = self._find_pending()


def _records(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(offset, delivery id, end) of each record from the start, up to the first one cut short or damaged."""
    offset = 0
    while (record := _parse(data, offset)) is not None:
        yield offset, record[0], record[4]
        offset = record[4]


def _parse(data: bytes, offset: int) -> tuple[int, float, str, bytes, int] | None:
    """One record at ``offset``: (id, received_at, source, body, end offset), or None if cut short or damaged."""
    if offset + HEADER.size > len(data):
        return None
    length, crc = HEADER.unpack_from(data, offset)
    start = offset + HEADER.size
    end = start + length
    if end > len(data) or length < FIXED.size:
        return None
    payload = data[start:end]
    if zlib.crc32(payload) != crc:
        return None
    delivery_id, at, source_length = FIXED.unpack_from(payload)
    source = payload[FIXED.size : FIXED.size + source_length].decode()
    return delivery_id, at, source, payload[FIXED.size + source_length :], end
