"""Text recognition (CTC): greedy CTC decoding of a [N, T, classes] output with the model's character
dictionary; exact-match accuracy and 1 - normalized edit distance, both blind to spaces (PaddleOCR's RecMetric),
and exact match with the word spaces counted (exact_match_spaces: "wateropen" is not "water open"); agreement =
the same text as the reference run."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rapidfuzz.distance import Levenshtein

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


def ctc_greedy_decode(probs: np.ndarray, characters: Sequence[str]) -> list[TextResult]:
    """Best path per row of [N, T, classes]: merge repeats, drop blanks; the score averages the kept steps."""
    ids, confs = probs.argmax(axis=2), probs.max(axis=2)
    results = []
    for row_ids, row_conf in zip(ids, confs):
        keep = np.ones(len(row_ids), dtype=bool)
        keep[1:] = row_ids[1:] != row_ids[:-1]
        keep &= row_ids != BLANK
        text = "".join(characters[i] for i in row_ids[keep])
        results.append(TextResult(text, float(row_conf[keep].mean()) if keep.any() else 0.0))
    return results


def compact(text: str) -> str:
    """The text without spaces, as PaddleOCR's RecMetric compares it by default."""
    return text.replace(" ", "")


def spaced(text: str) -> str:
    """The text with its word spaces kept: runs of whitespace count as one space, none at either end."""
    return " ".join(text.split())


class OcrRecTask(Task):
    """Text-line recognition with a CTC head (PP-OCR rec models)."""

    name = "ocr_rec"
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

    def postprocess(self, outputs: dict[str, np.ndarray], batch: Batch) -> list[TextResult]:
        probs = next(iter(outputs.values()))
        if probs.ndim != 3 or probs.shape[2] != len(self.characters):
            raise DataError(f"the model outputs {list(probs.shape)} but a CTC recognizer with "
                            f"postprocess.character_dict {self.cfg.postprocess.character_dict} "
                            f"(use_space_char {self.cfg.postprocess.use_space_char}) should give [N, T, "
                            f"{len(self.characters)}]; use the model's own dictionary")
        return ctc_greedy_decode(probs, self.characters)

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
