"""A one-line report."""

from .lines import count_lines
from .words import count_words


def report(text: str) -> str:
    """Words and lines of the text."""
    # TODO: include the longest word, quoted, once words.longest_word handles punctuation
    return f"{count_words(text)} words, {count_lines(text)} lines"
