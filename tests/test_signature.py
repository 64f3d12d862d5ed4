"""Tests for rlm_kernel.signature: parsing DSPy-style signatures and validating SUBMIT fields."""

from __future__ import annotations

import pytest

from rlm_kernel.signature import Field, Signature, SignatureError

# -- parse -------------------------------------------------------------------------------------


def test_parse_simple() -> None:
    sig = Signature.parse("question: str -> answer: str, confidence: float")
    assert sig.inputs == (Field("question", "str"),)
    assert sig.outputs == (Field("answer", "str"), Field("confidence", "float"))
    assert sig.describe() == "answer: str, confidence: float"


def test_parse_nested_types_keep_their_commas() -> None:
    sig = Signature.parse("docs: list[dict] -> counts: dict[str, int], rows: list[dict], n: int")
    assert sig.inputs == (Field("docs", "list[dict]"),)
    assert [f.name for f in sig.outputs] == ["counts", "rows", "n"]
    assert sig.outputs[0].type == "dict[str, int]"
    assert sig.outputs[1].type == "list[dict]"


def test_parse_deeply_nested() -> None:
    sig = Signature.parse("-> table: dict[str, list[int]], flag: bool")
    assert sig.inputs == ()
    assert sig.outputs == (Field("table", "dict[str, list[int]]"), Field("flag", "bool"))


def test_parse_types_optional_default_any() -> None:
    sig = Signature.parse("question -> answer")
    assert sig.inputs == (Field("question", "Any"),)
    assert sig.outputs == (Field("answer", "Any"),)
    assert sig.describe() == "answer: Any"


def test_parse_tolerates_whitespace() -> None:
    sig = Signature.parse("  a :  str ,b:int->  c :float  ")
    assert sig.inputs == (Field("a", "str"), Field("b", "int"))
    assert sig.outputs == (Field("c", "float"),)


def test_parse_missing_arrow() -> None:
    with pytest.raises(SignatureError, match="has no '->'") as exc:
        Signature.parse("question: str, answer: str")
    assert "'question: str, answer: str'" in str(exc.value)
    assert "e.g. 'question: str -> answer: str, confidence: float'" in str(exc.value)


def test_parse_no_outputs() -> None:
    with pytest.raises(SignatureError, match="names no output field after '->'"):
        Signature.parse("question: str ->   ")


@pytest.mark.parametrize("bad", ["1st", "my-answer", "two words", "a.b"])
def test_parse_bad_output_name(bad: str) -> None:
    text = f"q: str -> {bad}: str"
    with pytest.raises(SignatureError) as exc:
        Signature.parse(text)
    assert str(exc.value) == f"signature {text!r}: {bad!r} is not a valid field name"


def test_parse_bad_input_name() -> None:
    with pytest.raises(SignatureError, match="'9q' is not a valid field name"):
        Signature.parse("9q: str -> answer: str")


def test_parse_empty_name() -> None:
    with pytest.raises(SignatureError, match="'' is not a valid field name"):
        Signature.parse("q -> : str")


def test_signature_error_is_value_error() -> None:
    assert issubclass(SignatureError, ValueError)


# -- validate ----------------------------------------------------------------------------------

SIG = Signature.parse("question: str -> answer: str, confidence: float")


def test_validate_ok() -> None:
    assert SIG.validate({"answer": "42", "confidence": 0.9}) == []


def test_validate_int_is_ok_for_float() -> None:
    assert SIG.validate({"answer": "42", "confidence": 1}) == []


def test_validate_missing_field() -> None:
    assert SIG.validate({"answer": "42"}) == ["missing field 'confidence' (float)"]


def test_validate_unexpected_field() -> None:
    problems = SIG.validate({"answer": "42", "confidence": 0.5, "extra": 1})
    assert problems == ["unexpected field 'extra'; SUBMIT takes exactly: answer, confidence"]


def test_validate_reports_every_problem() -> None:
    problems = SIG.validate({"answr": "42", "confidence": "high"})
    assert problems == [
        "unexpected field 'answr'; SUBMIT takes exactly: answer, confidence",
        "missing field 'answer' (str)",
        "field 'confidence' must be float, got str 'high'",
    ]


def test_validate_wrong_type() -> None:
    assert SIG.validate({"answer": 42, "confidence": 0.5}) == [
        "field 'answer' must be str, got int 42"
    ]


def test_validate_bool_is_not_float_or_int() -> None:
    assert SIG.validate({"answer": "x", "confidence": True}) == [
        "field 'confidence' must be float, got bool True"
    ]
    sig = Signature.parse("-> n: int")
    assert sig.validate({"n": False}) == ["field 'n' must be int, got bool False"]
    assert sig.validate({"n": 3}) == []


def test_validate_float_is_not_int() -> None:
    sig = Signature.parse("-> n: int")
    assert sig.validate({"n": 1.5}) == ["field 'n' must be int, got float 1.5"]


def test_validate_bool_field() -> None:
    sig = Signature.parse("-> ok: bool")
    assert sig.validate({"ok": True}) == []
    assert sig.validate({"ok": 1}) == ["field 'ok' must be bool, got int 1"]


def test_validate_list_item_types() -> None:
    sig = Signature.parse("-> xs: list[int]")
    assert sig.validate({"xs": [1, 2, 3]}) == []
    assert sig.validate({"xs": []}) == []
    assert sig.validate({"xs": [1, "two", 3]}) == ["field 'xs[1]' must be int, got str 'two'"]
    assert sig.validate({"xs": [1, True]}) == ["field 'xs[1]' must be int, got bool True"]
    assert sig.validate({"xs": (1, 2)}) == ["field 'xs' must be list[int], got tuple (1, 2)"]


def test_validate_list_of_dicts() -> None:
    sig = Signature.parse("-> rows: list[dict]")
    assert sig.validate({"rows": [{"a": 1}, {}]}) == []
    assert sig.validate({"rows": [{"a": 1}, "b"]}) == ["field 'rows[1]' must be dict, got str 'b'"]


def test_validate_dict_key_and_value_types() -> None:
    sig = Signature.parse("-> counts: dict[str, int]")
    assert sig.validate({"counts": {"a": 1, "b": 2}}) == []
    assert sig.validate({"counts": {"a": "x"}}) == [
        "field \"counts['a']\" must be int, got str 'x'"
    ]
    assert sig.validate({"counts": {1: 1}}) == ["field 'counts key' must be str, got int 1"]
    assert sig.validate({"counts": [1]}) == ["field 'counts' must be dict[str, int], got list [1]"]


def test_validate_nested_list_in_dict() -> None:
    sig = Signature.parse("-> table: dict[str, list[int]]")
    assert sig.validate({"table": {"a": [1, 2]}}) == []
    assert sig.validate({"table": {"a": [1, "x"]}}) == [
        "field \"table['a'][1]\" must be int, got str 'x'"
    ]


def test_validate_any_and_unknown_types_not_enforced() -> None:
    sig = Signature.parse("-> a, b: Any, c: MyClass, d: Optional[int]")
    assert sig.validate({"a": object(), "b": None, "c": 3, "d": None}) == []
    assert sig.validate({"a": 1, "b": 2, "c": 3, "d": "x"}) == [
        "field 'd' must be int, got str 'x'"
    ]


def test_validate_type_names_case_insensitive() -> None:
    sig = Signature.parse("-> xs: List[Int]")
    assert sig.validate({"xs": [1]}) == []
    assert sig.validate({"xs": ["1"]}) == ["field 'xs[0]' must be Int, got str '1'"]


def test_validate_long_values_are_shortened() -> None:
    sig = Signature.parse("-> n: int")
    (problem,) = sig.validate({"n": "y" * 200})
    assert problem.startswith("field 'n' must be int, got str 'yyy")
    assert problem.endswith("...")
    assert len(problem) < 120


def test_field_check_directly() -> None:
    assert Field("x", "float").check(2) is None
    assert Field("x", "str").check(2) == "field 'x' must be str, got int 2"
    assert Field("x").check(object()) is None
