#!/usr/bin/env python3
"""Writes a Prometheus remote-write 1.0 request body (snappy-compressed protobuf WriteRequest).

    rw_body.py --out FILE --metric node_load1 --label job=probe --label instance=x
               [--samples 2] [--step 1] [--value 1.5]

One series: __name__=METRIC plus the --label pairs (sorted by name, as Prometheus sends
them), with --samples samples --step seconds apart, the last at the current time
(millisecond timestamps), values VALUE, VALUE+1, ... Standard library only: the protobuf is
encoded by hand and the snappy block holds literals only (valid snappy, just not smaller).

Post it as Prometheus does:
    curl --data-binary @FILE -H 'Content-Encoding: snappy' \
         -H 'Content-Type: application/x-protobuf' \
         -H 'X-Prometheus-Remote-Write-Version: 0.1.0' URL/api/v1/write
"""

from __future__ import annotations

import argparse
import struct
import sys
import time


def varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64  # int64 as protobuf encodes it
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(num: int, payload: bytes) -> bytes:
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def field_double(num: int, value: float) -> bytes:
    return varint(num << 3 | 1) + struct.pack("<d", value)


def field_varint(num: int, value: int) -> bytes:
    return varint(num << 3) + varint(value)


def write_request(labels: dict[str, str], samples: list[tuple[float, int]]) -> bytes:
    """prompb.WriteRequest{timeseries: [TimeSeries{labels, samples}]}."""
    series = b"".join(
        field_bytes(1, field_bytes(1, k.encode()) + field_bytes(2, v.encode()))
        for k, v in sorted(labels.items())
    )
    series += b"".join(field_bytes(2, field_double(1, v) + field_varint(2, ts)) for v, ts in samples)
    return field_bytes(1, series)


def snappy_literal(data: bytes) -> bytes:
    """A snappy block (not the framing format) made of literal elements only."""
    out = bytearray(varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        else:  # tag 61: length-1 in the next two bytes, little endian
            out.append(61 << 2)
            out += struct.pack("<H", n)
        out += chunk
    return bytes(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metric", required=True)
    ap.add_argument("--label", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--step", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--value", type=float, default=1.0, help="value of the first sample")
    args = ap.parse_args()
    labels = {"__name__": args.metric}
    for pair in args.label:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            ap.error(f"--label {pair!r}: expected NAME=VALUE")
        labels[name] = value
    if args.samples < 1:
        ap.error("--samples must be at least 1")
    now_ms = int(time.time() * 1000)
    step_ms = int(args.step * 1000)
    samples = [
        (args.value + i, now_ms - (args.samples - 1 - i) * step_ms) for i in range(args.samples)
    ]
    with open(args.out, "wb") as f:
        f.write(snappy_literal(write_request(labels, samples)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
