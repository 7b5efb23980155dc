"""Static analysis of model code for the coding env: extraction, asserts, imports, cooperation (no execution)."""

from __future__ import annotations

import pytest

from llm_coop_envs.code_analysis import (
    Cooperation,
    cooperation,
    extract_asserts,
    extract_functions,
    find_function,
    locate_syntax_error,
    prompt_imports,
    strip_fences,
)

AUX = "def aux(x):\n    return x + 1"


def names(text: str) -> list[str]:
    return [block.name for block in extract_functions(text)]


def test_strip_fences() -> None:
    assert strip_fences("```python\nx = 1\n```") == "x = 1"
    assert strip_fences("~~~\nx = 1\n~~~\n```py\ny\n```") == "x = 1\ny"


def test_plain_code_and_fenced_code_give_the_same_block() -> None:
    for text in (AUX, f"```python\n{AUX}\n```", f"```\n{AUX}\n```\n", f"  ```python\n{AUX}\n  ```"):
        [block] = extract_functions(text)
        assert (block.name, block.source, block.parses, block.has_return) == ("aux", AUX, True, True)


def test_prose_around_code_is_dropped() -> None:
    text = f"Sure! Here is the helper you asked for:\n\n```python\n{AUX}\n```\n\nIt adds one. Hope this helps."
    assert [b.source for b in extract_functions(text)] == [AUX]
    text = f"Here is my code:\n{AUX}\nThis adds one to x.\nAnother line of prose."
    assert [b.source for b in extract_functions(text)] == [AUX]


def test_nested_functions_stay_intact_with_and_without_prose() -> None:
    code = (
        "def solve(xs):\n"
        "    def helper(y):\n"
        "        return y * 2\n"
        "\n"
        "    class Box:\n"
        "        pass\n"
        "    return [helper(x) for x in xs]"
    )
    for text in (code, f"Solution below.\n{code}\nDone, the inner helper doubles."):
        [block] = extract_functions(text)
        assert block.source == code and block.parses and block.has_return


def test_decorators_and_multiline_signatures_are_kept() -> None:
    code = "@functools.lru_cache(maxsize=None)\ndef aux(\n    n: int,\n) -> int:\n    return n if n < 2 else aux(n - 1) + aux(n - 2)"
    for text in (code, f"Use memoisation:\n{code}\nThat is all."):
        [block] = extract_functions(text)
        assert block.source == code and block.name == "aux" and block.parses


def test_docstring_with_column_zero_lines_in_prose_mode() -> None:
    code = 'def aux(s):\n    """Split s.\nExample: aux("a b")\n"""\n    return s.split()'
    [block] = extract_functions(f"My answer:\n{code}\nEnd of answer.")
    assert block.source == code and block.parses


def test_multiple_definitions_last_one_wins() -> None:
    text = "def aux(x):\n    return 1\n\ndef other(y):\n    return y\n\ndef aux(x):\n    return 2\n\nclass K:\n    pass"
    assert names(text) == ["aux", "other", "aux"]
    found = find_function(extract_functions(text), "aux")
    assert found is not None and found.source == "def aux(x):\n    return 2"
    assert find_function(extract_functions(text), "missing") is None


def test_uniformly_indented_code_is_dedented() -> None:
    [block] = extract_functions("    def aux(x):\n        return x + 1\n")
    assert block.source == AUX


def test_broken_function_is_found_but_does_not_parse() -> None:
    [block] = extract_functions("def aux(x):\n    return (x + \n")
    assert (block.name, block.parses, block.has_return) == ("aux", False, True)
    [block] = extract_functions(
        "Answer:\ndef aux(x):\n    y = [x\n    # return is only in this comment\n    'return'\n"
    )
    assert (block.parses, block.has_return) == (False, False)


def test_functions_without_return_and_async() -> None:
    [block] = extract_functions("def aux(x):\n    print(x)")
    assert block.parses and not block.has_return
    [block] = extract_functions("async def aux(x):\n    return x")
    assert block.name == "aux" and block.has_return


@pytest.mark.parametrize("text", ["", "no code at all", "def is a keyword in Python", "@someone said hi", "x = 1"])
def test_no_functions(text: str) -> None:
    assert extract_functions(text) == []


def test_prompt_imports() -> None:
    prompt = 'from typing import List\nimport math\n\n\ndef f(xs: List[int]) -> int:\n    """ Doc. """\n'
    assert prompt_imports(prompt) == ["from typing import List", "import math"]
    assert prompt_imports("import re\ndef f(:\n") == ["import re"]  # unparsable prompt: line fallback


def test_extract_asserts_top_level_only_and_renamed() -> None:
    test = (
        "METADATA = {}\n\n"
        "def check(candidate):\n"
        "    assert candidate(1) == 2\n"
        "    assert True\n"
        "    for x in range(3):\n"
        "        assert candidate(x) == x + 1\n"
        "    assert abs(candidate(\n"
        "        0.5) - 1.5) < 1e-9, 'candidate is off'\n"
    )
    asserts = extract_asserts(test, "inc")
    assert asserts == ("assert inc(1) == 2", "assert abs(inc(\n        0.5) - 1.5) < 1e-9, 'inc is off'")
    assert extract_asserts("def check(f):\n    assert f(2) == 3\n", "inc") == ("assert inc(2) == 3",)
    with pytest.raises(ValueError, match="check"):
        extract_asserts("def test():\n    assert 1\n", "inc")
    with pytest.raises(SyntaxError):
        extract_asserts("def check(candidate):\n    assert candidate(\n", "inc")


def test_extract_asserts_keeps_setup_lines() -> None:
    test = (
        "def check(candidate):\n"
        "    import math\n"
        "    assert candidate(0) == 1\n"
        "    lst = list(range(\n"
        "        -3, 4))\n"
        "    if lst:\n"
        "        n = 1\n"
        "    else:\n"
        "        n = 2\n"
        "    r = candidate(1)  # mentions the candidate: not setup\n"
        "    assert r == 2\n"
        "    assert candidate(lst) == n\n"
    )
    first, second = extract_asserts(test, "f")
    assert first == "import math\nassert f(0) == 1"
    assert (
        second
        == "import math\nlst = list(range(\n    -3, 4))\nif lst:\n    n = 1\nelse:\n    n = 2\nassert f(lst) == n"
    )


@pytest.mark.parametrize(
    ("body", "calls", "thin", "ignored"),
    [
        ("return aux(x)", True, True, False),
        ('"""Doc."""\n    return aux(x)', True, True, False),
        ("y = aux(x)\n    return y", True, True, False),
        ("y = aux(x)\n    return y + 1", True, False, False),
        ("pass", False, True, False),
        ("return x + 1", False, False, False),
        ("aux(x)\n    return x", True, False, True),
        ("def inner(z):\n        return aux(z)\n    return inner(x) * 2", True, False, False),
        ("return [aux(v) for v in x]", True, False, False),
        ("return helper.aux(x)", False, False, False),
    ],
)
def test_cooperation(body: str, calls: bool, thin: bool, ignored: bool) -> None:
    program = f"def aux(x):\n    return x\n\ndef f(x):\n    {body}\n"
    assert cooperation(program, "f") == Cooperation(calls, thin, ignored)
    assert cooperation(program, "missing") == Cooperation(False, False, False)


def test_locate_syntax_error() -> None:
    assert locate_syntax_error("x = 1\n") is None
    problem = locate_syntax_error("x = 1\ny = (2 +\n")
    assert problem is not None and problem.line == 2 and problem.column >= 1
    assert locate_syntax_error("x = \0") is not None  # a NUL byte


@pytest.mark.parametrize(
    "body",
    [
        "return " + "+".join(["1"] * 3000),  # RecursionError inside ast.parse
        "return " + "-" * 100_000 + "1",  # MemoryError inside ast.parse
        "return " + "not " * 300 + "1",  # parses, but deeper than MAX_TREE_DEPTH
        "return 1\n" + "    x = 1\n" * 20_000,  # longer than MAX_SOURCE_CHARS
    ],
)
def test_hostile_source_is_a_syntax_failure_never_an_exception(body: str) -> None:
    main = f"def f():\n    {body}\n"
    blocks = extract_functions(main)
    assert [(b.name, b.parses) for b in blocks] == [("f", False)]
    problem = locate_syntax_error(main)
    assert problem is not None and problem.line >= 0
