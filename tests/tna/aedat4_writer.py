"""Write minimal, valid AEDAT4 files (uncompressed event streams) for tests.

An AEDAT4 file is the magic line ``#!AER-DAT4.0\\r\\n``, a little-endian u32 length, an IOHeader
flatbuffer (compression, file_data_position, and an XML description naming the streams), then
packets: u32 stream id, u32 byte length, and a size-prefixed ``EventPacket`` flatbuffer (file
identifier ``EVTS``) holding a vector of 16-byte ``Event`` structs (i64 t, i16 x, i16 y, bool on).
The IOHeader here leaves compression (None) and file_data_position (-1: read packets until the end
of the file) at their defaults, so no data table is needed. Every flatbuffer object is aligned
relative to the start of its buffer, as a flatbuffers builder would lay it out.
"""
import struct

import numpy as np

MAGIC = b"#!AER-DAT4.0\r\n"

_DESCRIPTION = """<dv version="2.0">
  <node name="outInfo" path="/mainModule/output/file/outInfo/">
    <node name="0" path="/mainModule/output/file/outInfo/0/">
      <attr key="compression" type="string">NONE</attr>
      <attr key="typeIdentifier" type="string">EVTS</attr>
      <node name="info" path="/mainModule/output/file/outInfo/0/info/">
        <attr key="sizeX" type="int">{width}</attr>
        <attr key="sizeY" type="int">{height}</attr>
      </node>
    </node>
  </node>
</dv>
"""


def _pad(data: bytes, align: int) -> bytes:
    return data + b"\0" * (-len(data) % align)


def ioheader(description: str) -> bytes:
    """IOHeader flatbuffer whose only stored field is ``description`` (field 2).

    Layout: root offset, identifier "IOHE", vtable (3 fields), table (soffset, string offset), string.
    """
    vtable_at, table_at, string_at = 8, 20, 28
    head = struct.pack("<I4s", table_at, b"IOHE")
    vtable = _pad(struct.pack("<HHHHH", 10, 8, 0, 0, 4), 4)
    table = struct.pack("<iI", table_at - vtable_at, string_at - (table_at + 4))
    text = description.encode()
    string = _pad(struct.pack("<I", len(text)) + text + b"\0", 4)
    return head + vtable + table + string


def event_packet(t, x, y, on) -> bytes:
    """Size-prefixed EventPacket flatbuffer holding ``len(t)`` events.

    Layout: size prefix, root offset, identifier "EVTS", vtable (1 field), table (soffset, vector
    offset), vector length at byte 28 and 8-byte aligned Event structs from byte 32.
    """
    vtable_at, table_at, vector_at = 12, 20, 28
    events = np.zeros(len(t), dtype=np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "?"),
                                              ("pad", "V3")]))
    events["t"], events["x"], events["y"], events["on"] = t, x, y, on
    body = (struct.pack("<I4s", table_at - 4, b"EVTS")
            + _pad(struct.pack("<HHH", 6, 8, 4), 4)
            + struct.pack("<iI", table_at - vtable_at, vector_at - (table_at + 4))
            + struct.pack("<I", len(t)) + events.tobytes())
    return struct.pack("<I", len(body)) + body


def write_aedat4(path, t, x, y, on, *, width: int = 128, height: int = 128, packet_size: int = 64):
    """Write events (1-D arrays of equal length: t in microseconds, x, y pixel coordinates, on
    polarity) to ``path`` as stream 0, in packets of at most ``packet_size`` events."""
    header = ioheader(_DESCRIPTION.format(width=width, height=height))
    chunks = [MAGIC, struct.pack("<I", len(header)), header]
    for start in range(0, len(t), packet_size):
        part = slice(start, start + packet_size)
        packet = event_packet(t[part], x[part], y[part], on[part])
        chunks.append(struct.pack("<II", 0, len(packet)) + packet)
    with open(path, "wb") as f:
        f.write(b"".join(chunks))
