"""Word statistics."""


def count_words(text: str) -> int:
    """Number of whitespace-separated words."""
    # TODO: treat hyphenated words as one word even when split across lines
    return len(text.split())


def longest_word(text: str) -> str:
    """The longest word of the text."""
    words = text.split()
    return max(words, key=len) if words else ""
