"""Draw the kernelspec logos (a small agent tree) with the standard library only.

Run `python kernelspec/make_logos.py` to rewrite `kernelspec/rlm/logo-{32x32,64x64}.png` and
`logo-svg.svg`. The PNGs are rendered from the same shapes as the SVG, 4x supersampled.
"""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

OUT = Path(__file__).parent / "rlm"
BG = (31, 41, 55)  # slate
EDGE = (148, 163, 184)
ROOT = (249, 115, 22)  # orange: the root agent
CHILD = (56, 189, 248)  # sky: sub-agents

# Shapes in a 64x64 design space.
NODES = [((32, 16), 8, ROOT), ((16, 46), 7, CHILD), ((48, 46), 7, CHILD)]
EDGES = [((32, 16), (16, 46)), ((32, 16), (48, 46))]
EDGE_W = 4.0
CORNER = 12


def _inside_rounded(x: float, y: float) -> bool:
    cx = min(max(x, CORNER), 64 - CORNER)
    cy = min(max(y, CORNER), 64 - CORNER)
    return (x - cx) ** 2 + (y - cy) ** 2 <= CORNER**2


def _near_segment(x: float, y: float, a: tuple[int, int], b: tuple[int, int]) -> bool:
    ax, ay = a
    bx, by = b
    t = ((x - ax) * (bx - ax) + (y - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)
    t = min(max(t, 0.0), 1.0)
    return math.hypot(x - (ax + t * (bx - ax)), y - (ay + t * (by - ay))) <= EDGE_W / 2


def _color(x: float, y: float) -> tuple[int, int, int, int]:
    if not _inside_rounded(x, y):
        return (0, 0, 0, 0)
    for (cx, cy), r, rgb in NODES:
        if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
            return (*rgb, 255)
    if any(_near_segment(x, y, a, b) for a, b in EDGES):
        return (*EDGE, 255)
    return (*BG, 255)


def render(size: int, ss: int = 4) -> bytes:
    """RGBA rows of the logo at `size` x `size` pixels."""
    scale = 64 / size
    rows = bytearray()
    for py in range(size):
        rows.append(0)  # PNG filter type: none
        for px in range(size):
            acc = [0, 0, 0, 0]
            for sy in range(ss):
                for sx in range(ss):
                    r, g, b, a = _color(
                        (px + (sx + 0.5) / ss) * scale, (py + (sy + 0.5) / ss) * scale
                    )
                    acc[0] += r * a
                    acc[1] += g * a
                    acc[2] += b * a
                    acc[3] += a
            alpha = acc[3] / (ss * ss)
            rgb = [round(c / acc[3]) if acc[3] else 0 for c in acc[:3]]
            rows += bytes([*rgb, round(alpha)])
    return bytes(rows)


def png(size: int) -> bytes:
    """A PNG file of the logo."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(render(size), 9))
        + chunk(b"IEND", b"")
    )


def svg() -> str:
    """The logo as SVG."""

    def hexrgb(rgb: tuple[int, int, int]) -> str:
        return "#{:02x}{:02x}{:02x}".format(*rgb)

    parts = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64">',
        f'  <rect width="64" height="64" rx="{CORNER}" fill="{hexrgb(BG)}"/>',
    ]
    for (ax, ay), (bx, by) in EDGES:
        parts.append(
            f'  <line x1="{ax}" y1="{ay}" x2="{bx}" y2="{by}" stroke="{hexrgb(EDGE)}" '
            f'stroke-width="{EDGE_W:g}" stroke-linecap="round"/>'
        )
    for (cx, cy), r, rgb in NODES:
        parts.append(f'  <circle cx="{cx}" cy="{cy}" r="{r}" fill="{hexrgb(rgb)}"/>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def main() -> None:
    """Write the three logo files."""
    OUT.mkdir(exist_ok=True)
    for size in (32, 64):
        (OUT / f"logo-{size}x{size}.png").write_bytes(png(size))
    (OUT / "logo-svg.svg").write_text(svg(), encoding="utf-8")


if __name__ == "__main__":
    main()
