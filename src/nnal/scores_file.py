"""A round's ``scores.npz``, written member by member into its file and read back with its large members mapped.

The file is an ordinary uncompressed ``.npz`` (``np.load`` reads it, as the report and older tools do). At the
paper's Liver scale a round's scores hold arrays of gigabytes (Core-Set's features or USIM's gradient embeddings:
104,133 x 10,000 float32 = 4.2 GB): ``np.savez`` into memory held the file's bytes beside the arrays, and
``np.load`` copies every member into memory. Here each member is written from its array in blocks of 16 MiB, its
data starting on a 64-byte boundary of the file (an alignment record in the zip entry's extra field, as Android's
zipalign pads its entries), so that reading maps a large member in place: it costs address space, and resident
memory only for the pages a strategy reads. The same arrays always give the same bytes (zip times are 1980, as
``np.savez`` writes them).
"""

from __future__ import annotations

import io
import struct
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np
from numpy.lib import format as npy

MMAP_MIN_BYTES = 1 << 20  # smaller members are read into memory
ALIGN = 64  # numpy's own alignment of .npy data
BLOCK_BYTES = 16 << 20  # bytes written per block
_PADDING_ID = 0xD935  # the extra-field record zipalign pads with; zip readers skip records they do not know
_LOCAL_HEADER = 30  # fixed part of a zip local file header
_ZIP64_EXTRA = 20  # the zip64 record zipfile adds to the local header of every member forced to zip64


def write_npz(fh: BinaryIO, arrays: Mapping[str, np.ndarray]) -> None:
    """``arrays`` as an uncompressed ``.npz`` into ``fh`` (a new, seekable binary file), one member at a time; no
    member is copied whole (non-contiguous arrays go block by block)."""
    with zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for key, value in arrays.items():
            _write_member(archive, fh, f"{key}.npy", np.asanyarray(value))


def _write_member(archive: zipfile.ZipFile, fh: BinaryIO, name: str, array: np.ndarray) -> None:
    info = zipfile.ZipInfo(name)  # dated 1980-01-01, as np.savez dates its members
    info.compress_type = zipfile.ZIP_STORED
    if array.dtype.hasobject:  # pickled, as np.savez would (no score array is one)
        with archive.open(info, "w", force_zip64=True) as member:
            npy.write_array(member, array)
        return
    header = _npy_header(array)
    data_start = fh.tell() + _LOCAL_HEADER + len(name.encode()) + _ZIP64_EXTRA + len(header)
    info.extra = _padding(-data_start % ALIGN)
    with archive.open(info, "w", force_zip64=True) as member:
        member.write(header)
        for block in _blocks(array):
            member.write(block)


def _padding(size: int) -> bytes:
    """An extra-field record of ``size`` bytes (a record takes at least 4: one more alignment period if less)."""
    if size < 4:
        size += ALIGN
    return struct.pack("<HH", _PADDING_ID, size - 4) + bytes(size - 4)


def _npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` magic and header of ``array`` (version 1.0, or 2.0 when the header is too long for it)."""
    buf = io.BytesIO()
    header = npy.header_data_from_array_1_0(array)
    try:
        npy.write_array_header_1_0(buf, header)
    except ValueError:
        buf = io.BytesIO()
        npy.write_array_header_2_0(buf, header)
    return buf.getvalue()


def _blocks(array: np.ndarray) -> Iterator[memoryview | bytes]:
    """The array's data in the order its header names (C, or Fortran for a Fortran-contiguous array), in blocks of
    about ``BLOCK_BYTES``: views of the array where it is contiguous, a copy of one block where it is not."""
    if array.flags.f_contiguous and not array.flags.c_contiguous:
        array = array.T  # the header says Fortran order: the transpose's C order
    if array.ndim == 0 or array.nbytes <= BLOCK_BYTES:
        yield array.tobytes(order="C")
        return
    rows = max(1, BLOCK_BYTES // max(1, array[0].nbytes))
    for start in range(0, len(array), rows):
        yield memoryview(np.ascontiguousarray(array[start:start + rows])).cast("B")


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every member of the ``.npz`` at ``path`` under its name without ``.npy`` (as ``np.load`` names them): members
    of at least ``MMAP_MIN_BYTES`` stored uncompressed are read-only memory maps of the file, the rest arrays in
    memory. A damaged file raises what ``np.load`` raises (``zipfile.BadZipFile``, ``ValueError``)."""
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as fh, zipfile.ZipFile(fh) as archive:
        for info in archive.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            mapped = _mapped(path, fh, info)
            out[key] = mapped if mapped is not None else _loaded(archive, info)
    return out


def _loaded(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    with archive.open(info) as member:
        return npy.read_array(member, allow_pickle=False)


def _mapped(path: Path, fh: BinaryIO, info: zipfile.ZipInfo) -> np.ndarray | None:
    """The member's array mapped from the file, or None when it is small, compressed or not a plain array."""
    if info.compress_type != zipfile.ZIP_STORED or info.file_size < MMAP_MIN_BYTES:
        return None
    fh.seek(info.header_offset)
    local = fh.read(_LOCAL_HEADER)
    if len(local) < _LOCAL_HEADER or local[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"{path}: bad local header of {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    start = info.header_offset + _LOCAL_HEADER + name_len + extra_len
    fh.seek(start)
    version = npy.read_magic(fh)
    if version not in ((1, 0), (2, 0)):
        return None
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, fortran, dtype = read_header(fh)
    if dtype.hasobject:
        return None
    offset = fh.tell()
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > start + info.file_size:
        raise ValueError(f"{path}: member {info.filename} is shorter than its header says")
    mapped = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order="F" if fortran else "C")
    return mapped.view(np.ndarray)  # a plain array whose base keeps the map open
