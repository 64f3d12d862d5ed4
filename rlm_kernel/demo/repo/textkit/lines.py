"""Line statistics."""


def count_lines(text: str) -> int:
    """Number of lines in the text."""
    # TODO: do not count the empty string after a trailing newline as a line
    return len(text.split("\n"))
