"""Tiny text statistics."""

from .lines import count_lines
from .report import report
from .words import count_words, longest_word

__all__ = ["count_lines", "count_words", "longest_word", "report"]
