"""A deterministic, non-LLM image analyser: the brain of the embedded offline endpoint.

It is *not* a language model. It reports measurable facts about an image with Pillow: size and
orientation, format, dominant colours by name, brightness, sharpness, and EXIF capture time and
camera when present. The same bytes always give the same text. No Beam import.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter, ImageStat

MODEL_ID = "local-image-analyzer"

# A small palette of named colours; each pixel cluster is named after the nearest one.
_PALETTE = {
    "black": (0, 0, 0),
    "dark gray": (64, 64, 64),
    "gray": (128, 128, 128),
    "light gray": (192, 192, 192),
    "white": (255, 255, 255),
    "red": (200, 30, 30),
    "dark red": (110, 20, 20),
    "orange": (240, 140, 30),
    "brown": (120, 75, 40),
    "beige": (220, 200, 160),
    "yellow": (235, 220, 50),
    "olive": (120, 120, 40),
    "green": (50, 160, 60),
    "dark green": (25, 80, 35),
    "teal": (30, 130, 130),
    "light blue": (140, 190, 235),
    "blue": (40, 80, 200),
    "navy": (20, 30, 90),
    "purple": (120, 50, 150),
    "pink": (235, 150, 180),
    "skin tone": (225, 180, 150),
}

_EXIF_DATETIME_ORIGINAL = 0x9003
_EXIF_DATETIME = 0x0132
_EXIF_MAKE = 0x010F
_EXIF_MODEL = 0x0110
_EXIF_IFD = 0x8769


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    return min(_PALETTE, key=lambda n: sum((a - b) ** 2 for a, b in zip(_PALETTE[n], rgb)))


def dominant_colours(img: Image.Image, count: int = 3) -> list[tuple[str, float]]:
    """Named colours covering the most pixels, with their share (0..1)."""
    small = img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    quantised = small.quantize(colors=8, method=Image.Quantize.MEDIANCUT)
    palette = quantised.getpalette() or []
    shares: dict[str, float] = {}
    total = 64 * 64
    for n, index in sorted(quantised.getcolors() or [], reverse=True):
        rgb = tuple(palette[index * 3 : index * 3 + 3])
        name = _nearest_colour(rgb)  # type: ignore[arg-type]
        shares[name] = shares.get(name, 0.0) + n / total
    ranked = sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))
    return ranked[:count]


def analyse(data: bytes) -> dict:
    """Facts about the image in ``data`` (any format Pillow reads)."""
    img = Image.open(io.BytesIO(data))
    fmt = img.format or "unknown"
    exif = img.getexif()
    img.load()
    width, height = img.size
    grey = img.convert("L")
    if max(width, height) > 512:
        grey.thumbnail((512, 512))
    brightness = ImageStat.Stat(grey).mean[0] / 255.0
    edges = grey.filter(ImageFilter.FIND_EDGES)
    if edges.width > 2 and edges.height > 2:  # Pillow leaves the 1-px border unfiltered
        edges = edges.crop((1, 1, edges.width - 1, edges.height - 1))
    sharpness = ImageStat.Stat(edges).stddev[0]
    sub = exif.get_ifd(_EXIF_IFD) if exif else {}
    taken = sub.get(_EXIF_DATETIME_ORIGINAL) or exif.get(_EXIF_DATETIME)
    camera = " ".join(str(exif.get(t)).strip() for t in (_EXIF_MAKE, _EXIF_MODEL) if exif.get(t))
    return {
        "format": fmt,
        "width": width,
        "height": height,
        "mode": img.mode,
        "orientation": "landscape"
        if width > height
        else "portrait"
        if height > width
        else "square",
        "colours": dominant_colours(img),
        "brightness": brightness,
        "sharpness": sharpness,
        "taken": str(taken) if taken else None,
        "camera": camera or None,
    }


def describe(data: bytes) -> str:
    """One paragraph of plain facts about the image."""
    return describe_facts(analyse(data))


def describe_facts(f: dict) -> str:
    """The paragraph for facts already gathered by ``analyse``."""
    tone = (
        "very dark"
        if f["brightness"] < 0.2
        else "dark"
        if f["brightness"] < 0.4
        else "bright"
        if f["brightness"] > 0.65
        else "evenly lit"
    )
    focus = (
        "sharp and detailed"
        if f["sharpness"] > 40
        else ("moderately detailed" if f["sharpness"] > 15 else "soft or smooth")
    )
    colours = ", ".join(f"{name} ({share:.0%})" for name, share in f["colours"])
    text = (
        f"A {f['orientation']} {f['format']} image, {f['width']}x{f['height']} pixels "
        f"({f['width'] * f['height'] / 1e6:.2f} MP). Dominant colours: {colours}. "
        f"The image is {tone} (mean brightness {f['brightness']:.2f}) and {focus} "
        f"(edge contrast {f['sharpness']:.1f})."
    )
    if f["taken"]:
        text += f" Captured {f['taken']}."
    if f["camera"]:
        text += f" Camera: {f['camera']}."
    return text


def fill_schema(f: dict, schema: dict) -> dict:
    """A JSON object for ``schema`` (flat properties, as ``--output_schema`` makes them) filled
    with facts whose names fit the property names (width, height, colours, orientation, format,
    brightness, sharpness, camera, taken; any other text field gets the description). Values it
    has no fact for are null where the schema allows it, else the type's zero."""
    facts = {
        "width": f["width"],
        "height": f["height"],
        "orientation": f["orientation"],
        "format": f["format"],
        "brightness": round(f["brightness"], 4),
        "sharpness": round(f["sharpness"], 4),
        "camera": f["camera"],
        "taken": f["taken"],
    }
    colours = [name for name, _ in f["colours"]]
    out = {}
    for name, prop in (schema.get("properties") or {}).items():
        types = prop.get("type")
        types = [types] if isinstance(types, str) else list(types or ["string"])
        kind = next((t for t in types if t != "null"), "string")
        lower = name.lower()
        named = next((k for k in facts if k in lower), None)
        value = facts[named] if named else None
        if "colo" in lower:
            value = colours if kind == "array" else colours[0] if colours else None
        elif named is None and kind == "string":  # a fact it lacks stays null
            value = describe_facts(f)
        if kind == "integer" and isinstance(value, float):
            value = round(value)
        if kind == "number" and isinstance(value, int):
            value = float(value)
        if value is not None and kind == "string" and not isinstance(value, str):
            value = str(value)
        if "enum" in prop:
            value = value if value in prop["enum"] else prop["enum"][0]
        if value is None and "null" not in types:
            value = {"string": "", "integer": 0, "number": 0.0, "boolean": False, "array": []}.get(
                kind
            )
        out[name] = value
    return out
