"""Static analysis of model-written code for the coding env. Nothing here ever executes code.

* :func:`extract_functions`: the top-level ``def`` blocks of a response. Markdown fence lines are removed;
  if the whole text parses, its top-level functions are taken from the syntax tree; otherwise (prose around
  the code, a broken function) each line starting a ``def`` (or its decorators) at column 0 opens a block
  that runs over the following indented or blank lines; it is extended to the longest run of lines, up to the
  next top-level ``def``/``class``/decorator, that parses as exactly one function. Nested functions, decorators, multi-line
  signatures and docstrings stay intact. A block that never parses is kept as its indentation block (so a
  function with a syntax error is still found and the syntax level can fail on it).
* :func:`prompt_imports`: the import statements of a task prompt.
* :func:`extract_asserts`: the tests of ``check(candidate)``: its top-level asserts, with their setup lines.
* :func:`cooperation`: how the main function uses ``aux`` (calls it, thin wrapper, ignored results).
* :func:`locate_syntax_error`: the first syntax error of a program, with line and column.
"""

from __future__ import annotations

import ast
import io
import re
import textwrap
import tokenize
import warnings
from dataclasses import dataclass

__all__ = [
    "Cooperation",
    "FunctionBlock",
    "SyntaxProblem",
    "cooperation",
    "extract_asserts",
    "extract_functions",
    "find_function",
    "locate_syntax_error",
    "prompt_imports",
    "strip_fences",
]


MAX_SOURCE_CHARS = 100_000
MAX_TREE_DEPTH = 200


def _parse(source: str) -> ast.Module:
    """``ast.parse`` without the SyntaxWarnings that model-written code triggers (e.g. ``1if``).

    Model text is hostile: source over ``MAX_SOURCE_CHARS`` characters, a tree deeper than ``MAX_TREE_DEPTH``
    nodes, and the parser's own ``RecursionError``/``MemoryError`` (``return 1+1+...``, ``return ----...1``)
    are all reported as ``SyntaxError``, so no caller ever sees anything but a syntax-level failure.
    """
    if len(source) > MAX_SOURCE_CHARS:
        raise SyntaxError(f"source longer than {MAX_SOURCE_CHARS} characters", ("<unknown>", 1, 1, ""))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(source)
    except (RecursionError, MemoryError) as error:
        raise SyntaxError(
            f"code too deeply nested to parse ({type(error).__name__})", ("<unknown>", 1, 1, "")
        ) from error
    if _depth_exceeds(tree, MAX_TREE_DEPTH):
        raise SyntaxError(f"syntax tree deeper than {MAX_TREE_DEPTH} levels", ("<unknown>", 1, 1, ""))
    return tree


def _depth_exceeds(tree: ast.AST, limit: int) -> bool:
    """Whether any node lies more than ``limit`` levels below ``tree`` (iterative: safe on any depth)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))
    return False


_FENCE = re.compile(r"^\s*(```|~~~)[\w+.#-]*\s*$")
_DEF = re.compile(r"^(?:async\s+)?def\s+([A-Za-z_]\w*)\s*\(")
_HEADER = re.compile(r"^(?:async\s+def\s|def\s|class\s|@)")
_MAX_EXTENSIONS = 64


@dataclass(frozen=True)
class FunctionBlock:
    """One top-level function of a response: its name, verbatim source and whether it has a ``return``."""

    name: str
    source: str
    parses: bool
    has_return: bool


def strip_fences(text: str) -> str:
    """``text`` without markdown fence lines (```` ``` ````, ```` ```python ````, ``~~~``)."""
    return "\n".join(line for line in text.splitlines() if not _FENCE.match(line))


def extract_functions(text: str) -> list[FunctionBlock]:
    """The top-level function blocks of a model response, in order (see the module docstring)."""
    cleaned = textwrap.dedent(strip_fences(text))
    lines = cleaned.splitlines()
    try:
        tree = _parse(cleaned)
    except (SyntaxError, ValueError):
        return _segment_functions(lines)
    blocks = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            source = "\n".join(lines[first - 1 : node.end_lineno])
            blocks.append(FunctionBlock(node.name, source, True, _has_return(node)))
    return blocks


def find_function(blocks: list[FunctionBlock], name: str) -> FunctionBlock | None:
    """The LAST block defining ``name`` (the one Python would keep), or ``None``."""
    found = [block for block in blocks if block.name == name]
    return found[-1] if found else None


def _segment_functions(lines: list[str]) -> list[FunctionBlock]:
    blocks = []
    i = 0
    while i < len(lines):
        start = i
        while i < len(lines) and lines[i].startswith("@"):
            i += 1
        match = _DEF.match(lines[i]) if i < len(lines) else None
        if match is None:
            i = max(i, start + 1)
            continue
        end = _indentation_end(lines, i)
        limit = next((k for k in range(end, len(lines)) if _HEADER.match(lines[k])), len(lines))
        block = _first_parsing(lines, start, end, limit)
        if block is not None:
            blocks.append(block[0])
            i = block[1]
            continue
        source = "\n".join(lines[start:end]).rstrip()
        blocks.append(FunctionBlock(match.group(1), source, False, _mentions_return(source)))
        i = end
    return blocks


def _indentation_end(lines: list[str], def_line: int) -> int:
    """One past the last line of the indented body that follows ``def_line``."""
    end = j = def_line + 1
    while j < len(lines):
        line = lines[j]
        if line.strip() and not line[0].isspace() and not line.startswith((")", "]", "}")):
            break
        j += 1
        if line.strip():
            end = j
    return end


def _first_parsing(lines: list[str], start: int, end: int, limit: int) -> tuple[FunctionBlock, int] | None:
    """The longest extension of ``lines[start:end]`` (within ``limit``) that parses as ONE function.

    Requiring a single function keeps trailing prose out (it fails to parse or adds a statement), while
    column-0 lines inside the function (a docstring's continuation lines) are taken in.
    """
    later = [k + 1 for k in range(end, limit) if lines[k].strip()][:_MAX_EXTENSIONS]
    for stop in reversed([end, *later]):
        source = "\n".join(lines[start:stop]).rstrip()
        try:
            tree = _parse(source)
        except (SyntaxError, ValueError):
            continue
        if len(tree.body) == 1 and isinstance(tree.body[0], (ast.FunctionDef, ast.AsyncFunctionDef)):
            node = tree.body[0]
            return FunctionBlock(node.name, source, True, _has_return(node)), stop
    return None


def _has_return(node: ast.AST) -> bool:
    return any(isinstance(child, ast.Return) for child in ast.walk(node))


def _mentions_return(source: str) -> bool:
    """Whether an unparsable block has a ``return`` keyword token (comments and strings excluded)."""
    found = False
    try:
        for token in tokenize.generate_tokens(io.StringIO(source).readline):
            if token.type == tokenize.NAME and token.string == "return":
                found = True
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # tokens read before the error still count
    return found


def prompt_imports(prompt: str) -> list[str]:
    """The top-level ``import``/``from ... import`` statements of a task prompt (trusted data)."""
    try:
        tree = _parse(prompt)
    except SyntaxError:
        return [line for line in prompt.splitlines() if re.match(r"^(import\s|from\s+\S+\s+import\s)", line)]
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    return [ast.get_source_segment(prompt, node) or "" for node in imports]


def extract_asserts(test_code: str, entry_point: str) -> tuple[str, ...]:
    """One test per ``assert`` statement directly in the body of ``check(candidate)`` that mentions ``candidate``.

    ``candidate`` (whatever ``check``'s parameter is called) is renamed to ``entry_point`` as a whole word.
    Each test is the assert preceded by the setup statements of ``check`` above it (top-level statements
    that neither assert nor mention ``candidate``, e.g. ``lst = list(range(9))``), so asserts that use a
    local variable can pass. Asserts nested in loops or conditions are skipped (out of their loop they
    could never pass). Raises ``ValueError`` when ``check`` is missing and ``SyntaxError`` when the test code
    does not parse.
    """
    tree = _parse(test_code)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None or not check.args.args:
        raise ValueError("the test code defines no function check(candidate)")
    parameter = check.args.args[0].arg
    lines = test_code.splitlines()
    setup: list[str] = []
    tests = []
    for statement in check.body:
        mentions = any(isinstance(n, ast.Name) and n.id == parameter for n in ast.walk(statement))
        if isinstance(statement, ast.Assert) and mentions:
            source = ast.get_source_segment(test_code, statement) or ""
            tests.append("\n".join([*setup, re.sub(rf"\b{re.escape(parameter)}\b", entry_point, source)]))
        elif not mentions and not any(isinstance(n, ast.Assert) for n in ast.walk(statement)):
            end = statement.end_lineno or statement.lineno
            setup.append(textwrap.dedent("\n".join(lines[statement.lineno - 1 : end])))
    return tuple(tests)


@dataclass(frozen=True)
class Cooperation:
    """How the main function uses ``aux``."""

    calls_aux: bool
    thin_wrapper: bool
    ignores_result: bool


def cooperation(program: str, entry_point: str) -> Cooperation:
    """Analyse the LAST top-level definition of ``entry_point`` in a program that parses."""
    tree = _parse(program)
    mains = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point]
    if not mains:
        return Cooperation(False, False, False)
    main = mains[-1]
    calls = [n for n in ast.walk(main) if _is_aux_call(n)]
    ignored = any(isinstance(n, ast.Expr) and _is_aux_call(n.value) for n in ast.walk(main))
    return Cooperation(bool(calls), _is_thin_wrapper(main), ignored)


def _is_aux_call(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "aux"


def _is_thin_wrapper(main: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Empty body, only ``return aux(...)``, or ``x = aux(...)`` followed by ``return x``."""
    body = list(main.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    body = [s for s in body if not isinstance(s, ast.Pass)]
    if not body:
        return True
    if len(body) == 1:
        return isinstance(body[0], ast.Return) and _is_aux_call(body[0].value)
    if len(body) == 2:
        first, second = body
        return (
            isinstance(first, ast.Assign)
            and len(first.targets) == 1
            and isinstance(first.targets[0], ast.Name)
            and _is_aux_call(first.value)
            and isinstance(second, ast.Return)
            and isinstance(second.value, ast.Name)
            and second.value.id == first.targets[0].id
        )
    return False


@dataclass(frozen=True)
class SyntaxProblem:
    """A syntax error: message, 1-based line and column in the program that was parsed."""

    message: str
    line: int
    column: int


def locate_syntax_error(program: str) -> SyntaxProblem | None:
    """The syntax error ``ast.parse`` reports for ``program``, or ``None`` when it parses."""
    try:
        _parse(program)
    except SyntaxError as error:
        return SyntaxProblem(error.msg, error.lineno or 0, error.offset or 0)
    except ValueError as error:  # e.g. a NUL byte in the source
        return SyntaxProblem(str(error), 0, 0)
    return None
