#!/usr/bin/env python3
"""Writes the 640x480 scenes of the faces-end-to-end benchmark (issue 13).

`faces-1.png`: the astronaut's face; `faces-3.png`: the astronaut, the cameraman and the
astronaut mirrored, side by side. Each face is a 200x200 cut of a fixture photograph
(tests/fixtures/face/astronaut.png around (225, 128), cameraman.png around (222, 163))
pasted on a flat grey background, so the files stay small and every face is whole.
Deterministic: run it again and the files are identical. Needs Pillow
(models/face/requirements.txt pins it):

    /work/venv-face/bin/python tools/bench/make_face_scenes.py
"""
import argparse
from pathlib import Path

from PIL import Image, ImageOps

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "face"
SIZE = (640, 480)
SIDE = 200
GREY = (128, 128, 128)


def cut(name, cx, cy):
    img = Image.open(FIXTURES / name).convert("RGB")
    h = SIDE // 2
    return img.crop((cx - h, cy - h, cx + h, cy + h))


def scene(faces):
    out = Image.new("RGB", SIZE, GREY)
    # Evenly spaced centres along the middle row.
    step = SIZE[0] // len(faces)
    for i, face in enumerate(faces):
        cx = step * i + step // 2
        out.paste(face, (cx - SIDE // 2, SIZE[1] // 2 - SIDE // 2))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=FIXTURES)
    args = ap.parse_args()
    astronaut = cut("astronaut.png", 225, 128)
    cameraman = cut("cameraman.png", 222, 163)
    mirrored = ImageOps.mirror(astronaut)
    for name, faces in [("faces-1.png", [astronaut]), ("faces-3.png", [astronaut, cameraman, mirrored])]:
        path = args.out / name
        tmp = path.with_suffix(".tmp.png")
        scene(faces).save(tmp, optimize=True)
        tmp.replace(path)
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
