#!/usr/bin/env python3
"""Writes the cv2.resize goldens of tests/datasets/test_cv2_resize.cpp (run once, by hand).

Needs Debian's python3-opencv (OpenCV 4.6, no IPP) and numpy: /usr/bin/python3 make_goldens.py
Sources: deterministic 8-bit RGB test images (noise, gradients, hard edges) written as raw
HWC bytes `src_<name>_<W>x<H>.rgb`; each golden is the source
resized with cv2.resize(src, (W, H), interpolation=...), all concatenated in goldens.rgb. The
test reads the list in cases.txt: `<source file> <W> <H> <interp> <byte offset in goldens.rgb>`.
"""
import os
import cv2
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
INTERP = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "lanczos4": cv2.INTER_LANCZOS4,
    "nearest": cv2.INTER_NEAREST,
    "nearest_exact": cv2.INTER_NEAREST_EXACT,
}


def source(name, w, h, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = rng.integers(0, 256, (h, w))                       # noise
    img[..., 1] = ((x * 255) // max(w - 1, 1) + (y * 7) % 32) % 256  # gradient + ripple
    img[..., 2] = np.where((x // 3 + y // 2) % 2 == 0, 250, 3)       # hard edges near the extremes
    return img


SOURCES = [("a", 37, 23, 1), ("b", 64, 48, 2), ("c", 29, 31, 3), ("d", 120, 9, 4)]
# (source, W, H): non-integer and integer shrinks (2x, 3x, 4x), enlargements, one side up and
# the other down, and widths whose W*3 leaves every tail length for the vectorised loops.
SIZES = {
    "a": [(17, 11), (18, 12), (5, 3), (45, 30), (74, 46), (50, 15), (20, 40), (1, 1), (36, 23)],
    "b": [(32, 24), (16, 12), (21, 16), (13, 7), (75, 50), (33, 25)],
    "c": [(10, 31), (58, 62), (7, 11), (30, 30)],
    "d": [(40, 3), (60, 9), (41, 5), (119, 9), (100, 17), (7, 4)],
}


def main():
    lines = []
    blob = bytearray()
    for name, w, h, seed in SOURCES:
        img = source(name, w, h, seed)
        src_file = f"src_{name}_{w}x{h}.rgb"
        img.tofile(os.path.join(HERE, src_file))
        for dw, dh in SIZES[name]:
            for key, flag in INTERP.items():
                out = cv2.resize(img, (dw, dh), interpolation=flag)
                lines.append(f"{src_file} {dw} {dh} {key} {len(blob)}")
                blob += out.tobytes()
    with open(os.path.join(HERE, "goldens.rgb"), "wb") as f:
        f.write(bytes(blob))
    with open(os.path.join(HERE, "cases.txt"), "w") as f:
        f.write(f"# cv2.resize goldens from OpenCV {cv2.__version__} (make_goldens.py)\n")
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
