"""Every way of finishing: FINAL, FINAL_VAR, the answer dict and typed SUBMIT; a 10 MB FINAL;
replies without code or with a code block that is never closed."""


def respond(messages, info):
    task, it = info["task"], info["iteration"]
    last = messages[-1]["content"]
    if task == "final":
        return '```python\nFINAL("plain")\nopen("after.txt", "w").write("ran")\n```\n```python\nopen("second.txt", "w").write("ran")\n```'
    if task == "final_var":
        return '```python\nresult = {"k": [1, 2]}\nFINAL_VAR("result")\n```'
    if task == "answer_dict":
        if it == 0:
            return '```python\nanswer["content"] = "draft"\nprint("not ready yet")\n```'
        return '```python\nanswer["content"] = "via the answer dict"\nanswer["ready"] = True\n```'
    if task == "submit":
        if it == 0:
            return '```python\nSUBMIT(answer="42", conf=0.9)\n```'
        if it == 1:
            assert "unexpected field 'conf'" in last, last
            return '```python\nSUBMIT(answer="42", confidence="high")\n```'
        assert "must be float" in last, last
        return '```python\nSUBMIT(answer="42", confidence=0.9)\n```'
    if task == "no_code":
        if it == 0:
            return "I think the answer is 4, no code needed."
        assert "no ```python code block" in last, last
        return "```repl\nFINAL(str(2 + 2))\n```"
    if task == "huge":
        return '```python\nFINAL("line\\n" + "x" * 10_000_000)\n```'
    if task == "unclosed":
        if it == 0:
            return "Here is the code:\n```python\nprint('cut off by max_tokens'"
        if it == 1:
            assert "never closed" in last and "no ```python code block" not in last, last
            return "No code at all this time."
        assert "no ```python code block" in last, last
        return "```python\nFINAL('told twice')\n```"
    return "```python\nFINAL('unknown task')\n```"
