"""Answers of several shapes, for how the notebook renders them (tests/browser/test_jupyterlab.py),
chosen by the root task's first word.

- LINES: a plain answer of several lines (the demo's), which must keep its line breaks.
- FIELDS: a SUBMIT dict with a short, a long and two table-like values (notebook 04's shape).
- SLEEP: the root starts two children that sleep, for the Stop button.
"""

LINES = """Found TODOs in textkit/lines.py, textkit/report.py, textkit/words.py.

textkit/lines.py:6: # TODO: do not count the empty string after a trailing newline as a line
difficulty: easy: one call to str.splitlines() fixes it

textkit/report.py:9: # TODO: include the longest word, quoted, once words.longest_word handles punctuation
difficulty: medium: waits for punctuation handling in longest_word first

textkit/words.py:6: # TODO: treat hyphenated words as one word even when split across lines
difficulty: medium: needs a rule for line-break hyphens without merging real compounds"""

FIELDS = """```python
titles = ["Down the Rabbit-Hole", "The Pool of Tears", "A Caucus-Race and a Long Tale",
          "The Rabbit Sends in a Little Bill", "Advice from a Caterpillar", "Pig and Pepper"]
chapters = [{"chapter": i + 1, "title": t, "characters": {"Alice": 20 + 7 * i, "Rabbit": i},
             "quote": "'Curiouser and curiouser!' cried Alice (she was so much surprised)"}
            for i, t in enumerate(titles)]
appearances = [{"chapter": c["chapter"], "character": name, "mentions": n}
               for c in chapters for name, n in c["characters"].items()]
SUBMIT(summary="Only Alice is named in every chapter.", chapters=chapters,
       appearances=appearances, notes="Counted with a regex per name.\\nTitles from the text.")
```"""


def respond(messages, info):
    task, depth = info["task"], info["depth"]
    if depth > 0:
        return "```python\nimport time\ntime.sleep(120)\n```"
    word = task.split()[0].rstrip(":") if task.split() else ""
    if word == "LINES":
        return f"```python\nFINAL({LINES!r})\n```"
    if word == "FIELDS":
        return FIELDS
    if word == "SLEEP":
        return '```python\nrlm_query_batched(["sleep a", "sleep b"])\n```'
    return '```python\nFINAL("unknown task")\n```'
