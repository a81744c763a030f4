"""Text recognition (CTC): greedy CTC decoding of a [N, T, classes] output with the model's character
dictionary; exact-match accuracy and 1 - normalized edit distance, both blind to spaces (PaddleOCR's RecMetric),
and exact match with the word spaces counted (exact_match_spaces: "wateropen" is not "water open"); agreement =
the same text as the reference run.

A line wider than the resize op's max_width is either squeezed to it (PP-OCR's way: an 8000 px line becomes
garbage) or, with ``long_lines: split``, fed as pieces of max_width that overlap by split_overlap px; each
character is placed by its CTC time step and kept by the piece whose share of the line holds it (each overlap
is cut in the widest gap between the characters the two pieces read there), so the pieces' texts join without
string alignment."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

from deploy.data.pipeline import ImagePipeline, ResizeKeepRatio
from deploy.data.sources import Batch
from deploy.errors import ConfigError, DataError
from deploy.tasks.base import MetricColumn, Metrics, Task, known

BLANK = 0  # PaddleOCR's CTCLabelDecode puts the blank first


@dataclass
class TextResult:
    """One text line: the decoded text and its confidence (mean probability of the kept characters)."""

    text: str
    score: float


def load_characters(path: Optional[Path], use_space_char: bool) -> list[str]:
    """The CTC classes: blank, the dictionary's characters (one per line), then a space when use_space_char."""
    if path is None:
        raise ConfigError("the ocr_rec task needs postprocess.character_dict (the model's dictionary, one "
                          "character per line, e.g. ppocr_keys_v1.txt)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise ConfigError(f"cannot read postprocess.character_dict {path}: {e.strerror or e}") from e
    chars = [line.rstrip("\r\n") for line in lines]
    return ["<blank>"] + chars + ([" "] if use_space_char else [])


@dataclass
class CtcPath:
    """One row's best path after merging repeats and dropping blanks: class ids, the time step where each
    character starts, and its probability there."""

    ids: np.ndarray
    steps: np.ndarray
    confs: np.ndarray
    total_steps: int  # T, the row's time steps: step t covers columns [t, t + 1) * input width / T


def text_result(ids: np.ndarray, confs: np.ndarray, characters: Sequence[str]) -> TextResult:
    """The characters' text and its score: the mean of their probabilities (0 for no character)."""
    return TextResult("".join(characters[i] for i in ids), float(confs.mean()) if len(ids) else 0.0)


def ctc_best_paths(probs: np.ndarray) -> list[CtcPath]:
    """Greedy CTC decoding of [N, T, classes]: per row, the argmax per step, repeats merged, blanks dropped."""
    ids, confs = probs.argmax(axis=2), probs.max(axis=2)
    paths = []
    for row_ids, row_conf in zip(ids, confs):
        keep = np.ones(len(row_ids), dtype=bool)
        keep[1:] = row_ids[1:] != row_ids[:-1]
        keep &= row_ids != BLANK
        paths.append(CtcPath(row_ids[keep], np.flatnonzero(keep), row_conf[keep], len(row_ids)))
    return paths


def ctc_greedy_decode(probs: np.ndarray, characters: Sequence[str]) -> list[TextResult]:
    """Best path per row of [N, T, classes]: merge repeats, drop blanks; the score averages the kept steps."""
    return [text_result(path.ids, path.confs, characters) for path in ctc_best_paths(probs)]


def line_pieces(width: int, max_width: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) columns of the pieces a resized line ``width`` px wide is recognised in: the whole line when
    it fits ``max_width``, else pieces of ``max_width`` at least ``overlap`` px apart, the last one ending at the
    line's end."""
    if width <= max_width:
        return [(0, width)]
    starts = list(range(0, width - max_width, max_width - overlap)) + [width - max_width]
    return [(start, start + max_width) for start in starts]


def overlap_cut(left: np.ndarray, right: np.ndarray, low: int, high: int) -> float:
    """Where to cut the overlap [low, high) of two pieces: both read the characters in it, at columns a few px
    apart, so cut in the middle of the widest gap between the characters either piece places there, keeping to
    the overlap's middle half (the pieces read worst near their ends); its middle when no gap lies there."""
    columns = np.sort(np.concatenate([left, right]))
    points = np.concatenate([[low], columns[(columns >= low) & (columns < high)], [high]])
    centres, gaps = (points[1:] + points[:-1]) / 2, np.diff(points)
    middle = (centres >= low + (high - low) / 4) & (centres <= high - (high - low) / 4)
    return float(centres[middle][np.argmax(gaps[middle])]) if middle.any() else (low + high) / 2


def join_pieces(paths: Sequence[CtcPath], pieces: Sequence[tuple[int, int]], piece_width: int,
                characters: Sequence[str]) -> TextResult:
    """One line's text from its pieces' paths: each character is placed at its time step's column in the line,
    and kept by the piece whose share of the line holds it (each overlap is cut between characters)."""
    columns = [start + (path.steps + 0.5) * piece_width / max(1, path.total_steps)
               for path, (start, _) in zip(paths, pieces)]
    cuts = [overlap_cut(columns[i], columns[i + 1], pieces[i + 1][0], pieces[i][1]) for i in range(len(pieces) - 1)]
    ids, confs = [], []
    for path, column, low, high in zip(paths, columns, [-np.inf, *cuts], [*cuts, np.inf]):
        kept = (column >= low) & (column < high)
        ids.append(path.ids[kept])
        confs.append(path.confs[kept])
    return text_result(np.concatenate(ids), np.concatenate(confs), characters)


def compact(text: str) -> str:
    """The text without spaces, as PaddleOCR's RecMetric compares it by default."""
    return text.replace(" ", "")


def spaced(text: str) -> str:
    """The text with its word spaces kept: runs of whitespace count as one space, none at either end."""
    return " ".join(text.split())


class OcrRecTask(Task):
    """Text-line recognition with a CTC head (PP-OCR rec models)."""

    name = "ocr_rec"
    splits_long_lines = True
    metrics = (MetricColumn("exact_match", "exact match"), MetricColumn("norm_edit_dis", "1 - NED"),
               MetricColumn("exact_match_spaces", "exact match (spaces)"))
    agreements = (MetricColumn("agreement", "same text"), MetricColumn("norm_edit_agreement", "1 - NED vs ref"))

    @functools.cached_property
    def characters(self) -> list[str]:
        """Read on first use: calibration needs no dictionary."""
        return load_characters(self.cfg.postprocess.character_dict, self.cfg.postprocess.use_space_char)

    def read_label(self, text: str) -> str:
        """The transcription (PaddleOCR's rec label files: path<TAB>text)."""
        return text

    def label_json(self, label: str) -> str:
        return label

    # ------------------------------------------------------------------ lines wider than max_width, in pieces

    @functools.cached_property
    def _resize(self) -> Optional[ResizeKeepRatio]:
        return next((op for op in self.cfg.preprocess if isinstance(op, ResizeKeepRatio)), None)

    @functools.cached_property
    def _pipeline(self) -> ImagePipeline:
        return ImagePipeline(self.cfg.preprocess)  # pads the pieces as it pads batches (batch_pad)

    def _pieces(self, batch: Batch) -> Optional[list[list[tuple[int, int]]]]:
        """Each line's pieces when a line of the batch is wider than max_width (long_lines: split), else None."""
        op = self._resize
        if op is None or op.long_lines != "split":
            return None
        widths = [record.resized_hw[1] for record in batch.records]
        if max(widths) <= op.max_width:
            return None
        return [line_pieces(width, op.max_width, op.split_overlap) for width in widths]

    @staticmethod
    def _piece_rows(batch: Batch, pieces: list[list[tuple[int, int]]]) -> list[np.ndarray]:
        return [batch.array[i, ..., start:end] for i, line in enumerate(pieces) for start, end in line]

    def feeds(self, batch: Batch, input_names: Sequence[str]) -> dict[str, np.ndarray]:
        """The batch, or when a line is wider than max_width, every line's pieces (one row each, padded)."""
        pieces = self._pieces(batch)
        if pieces is None:
            return super().feeds(batch, input_names)
        return {self.image_input(input_names): self._pipeline.batch(self._piece_rows(batch, pieces))}

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[TextResult]:
        probs = next(iter(outputs.values()))
        if probs.ndim != 3 or probs.shape[2] != len(self.characters):
            raise DataError(f"the model outputs {list(probs.shape)} but a CTC recognizer with "
                            f"postprocess.character_dict {self.cfg.postprocess.character_dict} "
                            f"(use_space_char {self.cfg.postprocess.use_space_char}) should give [N, T, "
                            f"{len(self.characters)}]; use the model's own dictionary")
        pieces = self._pieces(batch)
        if pieces is None:
            return ctc_greedy_decode(probs, self.characters)
        paths = ctc_best_paths(probs)
        if len(paths) != sum(map(len, pieces)):
            raise DataError(f"the model gave {len(paths)} rows for {sum(map(len, pieces))} line pieces")
        rows = self._piece_rows(batch, pieces)
        fed_width = self._pipeline.width_of(np.empty(self._pipeline.batch_shape({r.shape for r in rows}), np.uint8))
        results, first = [], 0
        for line in pieces:
            results.append(join_pieces(paths[first:first + len(line)], line, fed_width, self.characters))
            first += len(line)
        return results

    def record(self, result: TextResult) -> dict:
        return {"text": result.text, "score": result.score}

    def describe(self, result: TextResult) -> str:
        return f"{result.text!r} {result.score:.3f}"

    def score(self, results: Sequence[TextResult], labels: Sequence[Optional[str]]) -> Metrics:
        found, truth = known(results, labels)
        if not truth:
            return {"exact_match": None, "norm_edit_dis": None, "exact_match_spaces": None}
        exact = [compact(r.text) == compact(t) for r, t in zip(found, truth)]
        distance = [Levenshtein.normalized_distance(compact(r.text), compact(t)) for r, t in zip(found, truth)]
        exact_spaces = [spaced(r.text) == spaced(t) for r, t in zip(found, truth)]
        return {"exact_match": float(np.mean(exact)), "norm_edit_dis": 1.0 - float(np.mean(distance)),
                "exact_match_spaces": float(np.mean(exact_spaces))}

    def agreement(self, results: Sequence[TextResult], reference: Sequence[TextResult]) -> Metrics:
        same = [r.text == ref.text for r, ref in zip(results, reference)]
        distance = [Levenshtein.normalized_distance(r.text, ref.text) for r, ref in zip(results, reference)]
        return {"agreement": float(np.mean(same)), "norm_edit_agreement": 1.0 - float(np.mean(distance))}
