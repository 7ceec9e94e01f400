"""Reading table rows straight from an SQLite file's pages, for rows no b-tree path reaches.

When an interior page of a table is destroyed, the leaf pages under it are intact but
orphaned: SQLite cannot find them by any query. :func:`leaf_rows` reads every table-leaf
page of the file (following overflow chains), skipping the pages on the freelist, and
decodes each cell's record: what ``.recover`` of the sqlite3 shell does, for shells built
without it. The caller decides which rows belong to which table (by their shape) and
which it has already (by their key).

The format is SQLite's documented file format (https://www.sqlite.org/fileformat.html).
Any damage met here ends the reading of that one page or cell, never the scan.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_LEAF_TABLE = 0x0D


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    """(value, offset after it) of the SQLite varint at ``at``."""
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9


def _value(serial: int, data: bytes, at: int) -> tuple[Any, int]:
    """(value, offset after it) of one record field of serial type ``serial``."""
    if serial == 0:
        return None, at
    if serial in (8, 9):
        return serial - 8, at
    if 1 <= serial <= 6:
        size = (1, 2, 3, 4, 6, 8)[serial - 1]
        if at + size > len(data):
            raise ValueError("field past the record")
        return int.from_bytes(data[at:at + size], "big", signed=True), at + size
    if serial == 7:
        return struct.unpack(">d", data[at:at + 8])[0], at + 8
    if serial >= 12:
        size = (serial - 12) // 2
        if at + size > len(data):
            raise ValueError("field past the record")
        raw = data[at:at + size]
        return (bytes(raw) if serial % 2 == 0 else raw.decode("utf-8")), at + size
    raise ValueError(f"reserved serial type {serial}")


def record(data: bytes) -> list[Any]:
    """The fields of one SQLite record."""
    header, at = _varint(data, 0)
    serials = []
    while at < header:
        serial, at = _varint(data, at)
        serials.append(serial)
    values, at = [], header
    for serial in serials:
        value, at = _value(serial, data, at)
        values.append(value)
    return values


class _File:
    def __init__(self, data: bytes) -> None:
        self.data = data
        page_size = int.from_bytes(data[16:18], "big")
        self.page_size = 65536 if page_size == 1 else page_size
        self.usable = self.page_size - data[20]
        self.pages = len(data) // self.page_size

    def page(self, number: int) -> bytes:
        start = (number - 1) * self.page_size
        return self.data[start:start + self.page_size]

    def freelist(self) -> set[int]:
        """The pages on the freelist (their content is stale), as far as it reads."""
        free: set[int] = set()
        trunk = int.from_bytes(self.data[32:36], "big")
        while 0 < trunk <= self.pages and trunk not in free:
            free.add(trunk)
            page = self.page(trunk)
            count = int.from_bytes(page[4:8], "big")
            for i in range(min(count, (self.usable - 8) // 4)):
                free.add(int.from_bytes(page[8 + 4 * i:12 + 4 * i], "big"))
            trunk = int.from_bytes(page[0:4], "big")
        return free

    def payload(self, page: bytes, at: int, size: int) -> bytes:
        """A cell's payload of ``size`` bytes starting at ``at``, with its overflow pages."""
        u = self.usable
        most, least = u - 35, ((u - 12) * 32 // 255) - 23
        if size <= most:
            return page[at:at + size]
        local = least + (size - least) % (u - 4)
        if local > most:
            local = least
        parts = [page[at:at + local]]
        got, nxt = local, int.from_bytes(page[at + local:at + local + 4], "big")
        seen: set[int] = set()
        while got < size and 0 < nxt <= self.pages and nxt not in seen:
            seen.add(nxt)
            over = self.page(nxt)
            take = min(size - got, u - 4)
            parts.append(over[4:4 + take])
            got += take
            nxt = int.from_bytes(over[0:4], "big")
        if got < size:
            raise ValueError("overflow chain cut short")
        return b"".join(parts)


def leaf_rows(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """(rowid, fields) of every cell of every table-leaf page of the file not on its freelist."""
    f = _File(path.read_bytes())
    free = f.freelist()
    for number in range(1, f.pages + 1):
        if number in free:
            continue
        page = f.page(number)
        head = 100 if number == 1 else 0
        if len(page) < head + 8 or page[head] != _LEAF_TABLE:
            continue
        cells = int.from_bytes(page[head + 3:head + 5], "big")
        for i in range(cells):
            try:
                at = int.from_bytes(page[head + 8 + 2 * i:head + 10 + 2 * i], "big")
                size, at = _varint(page, at)
                rowid, at = _varint(page, at)
                if rowid >= 1 << 63:
                    rowid -= 1 << 64
                yield rowid, record(f.payload(page, at, size))
            except (IndexError, ValueError, UnicodeDecodeError, struct.error):
                continue  # a damaged cell: the next one may be sound
