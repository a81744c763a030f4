"""Text rendering shared by the PP-OCR build scripts (models/ppocr_*/build.py): a word list and text generators,
OpenCV's Hershey fonts, backgrounds, ink colours and image degradations, all driven by a numpy Generator so
that the same seed gives the same pixels.

cv2 is imported inside the functions: a build that is up to date never loads it. Changing what one of these
functions draws (or how many random numbers it takes) changes every data set built with it: bump the
RENDERER_VERSION of each build script that uses it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from buildkit import BuildError

WORDS = ("the of and to in is for on with as by at from this that are was be or it an have not invoice total "
         "amount date price order number account payment customer service address street road city phone email "
         "station river market garden office school hospital hotel bank coffee bread water paper quality "
         "delivery receipt discount product model series version report summary page section chapter north "
         "south east west open closed exit entrance parking free sale new old large small").split()
MONTHS = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
UNITS = "kg g ml km cm mm pcs".split()
DOMAINS = "com org net".split()


def random_words(rng: np.random.Generator, low: int, high: int) -> str:
    """``low`` to ``high - 1`` words from WORDS, lower case (10%: upper case, 50%: title case)."""
    line = " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), rng.integers(low, high)))
    case = rng.random()
    return line.upper() if case < 0.1 else line.title() if case < 0.6 else line


def random_text(rng: np.random.Generator) -> str:
    """A line of words (mostly), a date or number, or a 'Label: 12.34' field."""
    kind = rng.random()
    if kind < 0.75:
        return random_words(rng, 2, 6)
    if kind < 0.85:
        if rng.random() < 0.5:
            return f"{rng.integers(1, 28):02d}/{rng.integers(1, 13):02d}/{rng.integers(1990, 2030)}"
        return str(rng.integers(0, 10 ** int(rng.integers(3, 9))))
    return f"{WORDS[rng.integers(len(WORDS))].title()}: {rng.integers(1, 9999)}.{rng.integers(0, 100):02d}"


def _number(rng: np.random.Generator) -> str:
    """An integer of 1-7 digits, with thousands separators 30% of the time when it is long."""
    value = int(rng.integers(0, 10 ** int(rng.integers(1, 8))))
    return f"{value:,}" if value >= 1000 and rng.random() < 0.3 else str(value)


def _price(rng: np.random.Generator) -> str:
    """'12.99', '$1,234.50', '-4.20', '19.90 EUR' and the like."""
    amount = f"{rng.integers(0, 10 ** int(rng.integers(1, 5))):,}.{rng.integers(0, 100):02d}"
    kind = rng.random()
    if kind < 0.35:
        return f"${amount}"
    if kind < 0.5:
        return f"-{amount}"
    if kind < 0.65:
        return f"{amount} EUR"
    return amount


def _date(rng: np.random.Generator) -> str:
    """A date in one of five formats, or a time of day."""
    day, month, year = int(rng.integers(1, 29)), int(rng.integers(1, 13)), int(rng.integers(1990, 2030))
    kind = int(rng.integers(0, 6))
    if kind == 5:
        return f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}"
    return (f"{day:02d}/{month:02d}/{year}", f"{year}-{month:02d}-{day:02d}", f"{day:02d}.{month:02d}.{year}",
            f"{MONTHS[month - 1]} {day}, {year}", f"{day} {MONTHS[month - 1]} {year}")[kind]


def _word(rng: np.random.Generator) -> str:
    """One word of WORDS, lower case."""
    return WORDS[int(rng.integers(len(WORDS)))]


def _field(rng: np.random.Generator) -> str:
    """A labelled value: 'Total: $12.30', 'No. 1234', 'Tel: 555-0123', 'Order #1234', an e-mail, a size..."""
    kind = int(rng.integers(0, 9))
    if kind == 0:
        return f"{_word(rng).title()}: {_price(rng)}"
    if kind == 1:
        return f"{_word(rng).title()}: {_number(rng)}"
    if kind == 2:
        return f"No. {rng.integers(1, 99999)}"
    if kind == 3:
        return f"Tel: {rng.integers(100, 1000)}-{rng.integers(0, 10000):04d}"
    if kind == 4:
        return f"{_word(rng).title()} #{rng.integers(1, 99999)}"
    if kind == 5:
        return f"{_word(rng)}@{_word(rng)}.{DOMAINS[int(rng.integers(len(DOMAINS)))]}"
    if kind == 6:
        return f"{rng.integers(1, 1000)} {UNITS[int(rng.integers(len(UNITS)))]}"
    if kind == 7:
        return f"({_word(rng)} {rng.integers(1, 100)})"
    return f"{rng.integers(1, 100)}% {_word(rng)}"


def random_line(rng: np.random.Generator, max_chars: int) -> str:
    """At most ``max_chars`` characters: words (half the time), a number, a price, a date or time, or a
    labelled field; Latin letters, digits, spaces and ``.,:-/$%#()@!?``."""
    kind = rng.random()
    if kind < 0.5:
        text = random_words(rng, 1, 6)
        if rng.random() < 0.15:
            text += "!?.,"[int(rng.integers(4))]
    elif kind < 0.6:
        text = _number(rng)
    elif kind < 0.7:
        text = _price(rng)
    elif kind < 0.8:
        text = _date(rng)
    else:
        text = _field(rng)
    while len(text) > max_chars:
        text = text.rsplit(" ", 1)[0] if " " in text else text[:max_chars]
    return text


def fonts() -> list[int]:
    """The six upright Hershey fonts (the script ones are left out: they read poorly)."""
    import cv2

    return [cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
            cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_COMPLEX_SMALL]


def font_scale(font: int, glyph_height: float) -> float:
    """The ``cv2.putText`` scale that makes "Hg" ``glyph_height`` px tall above the baseline (the Hershey fonts
    differ in size at the same scale)."""
    import cv2

    (_, unit), _ = cv2.getTextSize("Hg", font, 1.0, 1)
    return glyph_height / unit


def ink_colour(rng: np.random.Generator, inverted: bool) -> tuple[int, int, int]:
    """A dark ink (15% of the time a lighter one), or a light one on a dark background when ``inverted``."""
    ink = rng.integers(190, 256, 3) if inverted else rng.integers(0, 90 if rng.random() < 0.85 else 140, 3)
    return tuple(int(c) for c in ink)


def background(rng: np.random.Generator, height: int, width: int, inverted: bool) -> np.ndarray:
    """A flat or horizontally graded background, light (dark when ``inverted``)."""
    colour = rng.integers(0, 80, 3) if inverted else rng.integers(170, 256, 3)
    row = np.empty((1, width, 3), np.float32)  # every row is the same: compute one
    row[:] = colour
    if rng.random() < 0.4:
        row += np.linspace(0, rng.uniform(-50, 50), width, dtype=np.float32)[None, :, None]
    return np.repeat(np.clip(row, 0, 255).astype(np.uint8), height, axis=0)


def blur_and_noise(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A Gaussian blur (30% of the time, 3x3 or 5x5), then sensor noise of sigma 0-8."""
    import cv2

    if rng.random() < 0.3:
        k = int(rng.choice([3, 3, 5]))
        image = cv2.GaussianBlur(image, (k, k), 0)
    return np.clip(image + rng.normal(0, rng.uniform(0, 8), image.shape), 0, 255).astype(np.uint8)


def shrink_to_height(rng: np.random.Generator, image: np.ndarray, low: int = 32, high: int = 64) -> np.ndarray:
    """Down-scale (never up) to a random height in [low, high), keeping the aspect ratio."""
    import cv2

    height, width = image.shape[:2]
    target = int(rng.integers(low, high))
    if target < height:
        image = cv2.resize(image, (max(1, round(width * target / height)), target), interpolation=cv2.INTER_AREA)
    return image


def jpeg(rng: np.random.Generator, image: np.ndarray, quality: tuple[int, int] = (30, 90)) -> np.ndarray:
    """A JPEG round trip at a random quality in [quality[0], quality[1])."""
    import cv2

    _, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(*quality))])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)


def write_png(path: Path, image: np.ndarray) -> None:
    """``cv2.imwrite`` (default compression), or a BuildError."""
    import cv2

    if not cv2.imwrite(str(path), image):
        raise BuildError(f"cv2.imwrite failed for {path}; is the disk full or read-only?")
