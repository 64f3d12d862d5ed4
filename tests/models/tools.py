"""Calls a host-side custom tool and reports whether the system prompt listed it."""


def respond(messages, info):
    listed = "lookup(key: str, n: int = 1) -> str" in messages[0]["content"]
    return f"""```python
r = lookup("abc", n=2)
FINAL(r + "|listed={listed}|doc=" + str(lookup.__doc__))
```"""
