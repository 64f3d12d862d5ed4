"""Scripted model of 04-long-context: who is on stage in each chapter of a novel.

root (the book is `context`, a long string it never reads whole): find the chapter headings →
split the chapters and send each to a sub-LLM with `llm_query_batched` (one prompt per chapter,
asking for JSON) → parse the replies, check them against the text, build typed rows → SUBMIT.

The sub-LLM (`kind == "llm_query"`) answers from the chapter text in its prompt: the title is the
chapter's first line, the characters are those of the cast it knows (as a real model knows the
book) with the number of times the chapter names them, and the quote is the chapter's sentence
that names the most of them. So every reply is true of its chapter.
"""

import json
import re
from typing import Any

LATENCY_S = 0.05

# How the chapters name each character (whole words, case-sensitive).
CAST = {
    "Alice": r"\bAlice\b",
    "White Rabbit": r"\bRabbit\b",
    "Mouse": r"\bMouse\b",
    "Dodo": r"\bDodo\b",
    "Bill the Lizard": r"\bBill(?: the Lizard)?\b|\bLizard\b",
    "Caterpillar": r"\bCaterpillar\b",
    "Pigeon": r"\bPigeon\b",
    "Duchess": r"\bDuchess\b",
    "Footman": r"\bFootman\b",
    "Cheshire Cat": r"\bCat\b",
    "Hatter": r"\bHatter\b",
    "March Hare": r"\bHare\b",
    "Dormouse": r"\bDormouse\b",
    "Queen": r"\bQueen\b",
    "King": r"\bKing\b",
    "Knave": r"\bKnave\b",
    "Gryphon": r"\bGryphon\b",
    "Mock Turtle": r"\bMock Turtle\b",
}

ROOT = [
    """The book is in `context`; I'll look at its start and find the chapter headings rather than
read it whole.
```python
import re
print(type(context).__name__, f"{len(context):,} characters, {len(context.split()):,} words")
print(context[:200].strip())
headings = list(re.finditer(r"^\\s*CHAPTER ([IVXLC]+)\\s*$", context, re.M))
print(len(headings), "chapters:", " ".join(m.group(1) for m in headings))
```""",
    """Twelve chapters of about 2,000 words each. I'll split them and give each chapter to a
sub-LLM, all at once with `llm_query_batched`, asking for JSON.
```python
ends = [m.start() for m in headings[1:]] + [len(context)]
chapter_texts = [context[m.end():end].strip() for m, end in zip(headings, ends)]
PROMPT = (
    "Below is chapter {n} of Lewis Carroll's Alice's Adventures in Wonderland. Reply with JSON "
    'only: {{"title": the chapter\\'s title, "characters": {{name: how many times the chapter '
    'names them}} for every character it names, "quote": the sentence of the chapter that '
    'names the most characters, quoted exactly}}.\\n\\n'
)
replies = llm_query_batched([PROMPT.format(n=n) + text for n, text in enumerate(chapter_texts, 1)])
print(len(replies), "replies; the first:")
print(replies[0])
```""",
    """I'll parse the replies and check them against the text before I trust them: each title
must be the chapter's first line and each quote must occur in its chapter.
```python
import json

def parse(reply):
    return json.loads(reply[reply.index("{"):reply.rindex("}") + 1])

def flat(text):
    return " ".join(text.split())

chapters, appearances = [], []
for n, (text, reply) in enumerate(zip(chapter_texts, replies), 1):
    data = parse(reply)
    assert data["title"] == text.splitlines()[0].strip(), (n, data["title"])
    assert flat(data["quote"]) in flat(text), (n, data["quote"])
    cast = {name: int(k) for name, k in data["characters"].items() if int(k) > 0}
    chapters.append({"chapter": n, "title": data["title"], "words": len(text.split()),
                     "characters": cast, "quote": flat(data["quote"])})
    appearances += [{"chapter": n, "character": name, "mentions": k} for name, k in cast.items()]
for c in chapters:
    top = sorted(c["characters"].items(), key=lambda kv: -kv[1])[:4]
    print(f"{c['chapter']:2} {c['title']:34} {c['words']:5} words  "
          + ", ".join(f"{name} {k}" for name, k in top))
```""",
    """All replies check out. The totals, then the typed result.
```python
totals = {}
for a in appearances:
    totals[a["character"]] = totals.get(a["character"], 0) + a["mentions"]
ranked = sorted(totals, key=lambda name: -totals[name])
in_all = [name for name in ranked if all(name in c["characters"] for c in chapters)]
summary = (
    f"{len(chapters)} chapters, {sum(c['words'] for c in chapters):,} words. "
    f"Only {', '.join(in_all)} is named in every chapter ({totals['Alice']} times); "
    "after her the most named are "
    + ", ".join(f"the {name} ({totals[name]})" for name in ranked[1:5])
    + ". Most characters belong to one or two chapters: the cast changes as Alice moves on."
)
print(summary)
SUBMIT(chapters=chapters, appearances=appearances, summary=summary)
```""",
]


def _reply(prompt: str) -> str:
    """The sub-LLM's JSON for one chapter, computed from the chapter text in the prompt."""
    text = prompt.split("\n\n", 1)[1] if "\n\n" in prompt else prompt
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    title = lines[0] if lines else ""
    counts = {name: len(re.findall(rx, text)) for name, rx in CAST.items()}
    named = {name: k for name, k in counts.items() if k}
    flat = " ".join(text.split()[len(title.split()) :])
    sentences = [s.strip() for s in re.findall(r"[^.!?]+[.!?]+'?", flat) if len(s.split()) > 3]

    def score(s: str) -> tuple[int, int]:
        found = [len(re.findall(rx, s)) for rx in CAST.values()]
        return (sum(1 for k in found if k), sum(found))

    quote = max(sentences, key=score) if sentences else title
    return json.dumps({"title": title, "characters": named, "quote": quote}, ensure_ascii=False)


def respond(messages: list[dict[str, str]], info: dict[str, Any]) -> str:
    if info["kind"] == "llm_query":
        return _reply(str(messages[-1]["content"]))
    return ROOT[min(int(info["iteration"]), len(ROOT) - 1)]
