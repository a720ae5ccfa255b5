"""A small, closed expression language for derived features (`--features`, `--aggregate`).

Grammar (whitespace is ignored between tokens)::

    expr    := term (('+' | '-') term)*          left-associative
    term    := unary (('*' | '/') unary)*        left-associative
    unary   := ('-' | '+') unary | power
    power   := atom ('^' unary)?                 right-associative: a^b^c = a^(b^c); x^-2 is allowed
    atom    := NUMBER | NAME | QUOTED | NAME '(' args ')' | '(' expr ')'
    args    := expr (',' expr)*

`^` binds tighter than unary minus (`-x^2` is `-(x^2)`). NUMBER is decimal or scientific (`12`, `.5`,
`2.5E+4`) and must be a finite double; NAME is `[A-Za-z_][A-Za-z0-9_]*`; QUOTED is a double-quoted column name
with `""` for a double quote (`"max temp"`). A NAME followed by `(` calls one of a fixed list of functions
(`FUNCTIONS`; names case-insensitive); otherwise it is a column, even if it is called `log`. With
`aggregates=True` (`--aggregate`) the aggregates sum, mean, min and max are allowed too, every column must be
inside exactly one of them, and arithmetic around them is fine (`max(temp)-min(temp)`). Anything else (`;`, `'`,
`--`, an unknown function, a wrong number of arguments, ...) is an InputError naming the option, quoting the
text and pointing at the offending part with its 1-based character position and a caret line.

The tree is made of frozen dataclasses that compare by value. `canonical` prints it back in one normal form:
no spaces (but "- -"), parentheses only where precedence or associativity needs them, lower-case functions, names
quoted only where they must be, numbers in the shortest form that reads back to the same double (`2000`,
`0.5`, `1e-05`); `parse(canonical(t)) == t` for every tree.

`to_sql` writes DuckDB SQL computing the expression in DOUBLE and `linreg.features.evaluate` computes it with
NumPy (float64, one value a row, in whatever units the expression gives: temp^2 is in degrees squared), with
the same results:
outside a function's domain (log of x <= 0, division by 0, 0 to a negative power, a negative base to a
non-integer power, the square root of a negative number) the value is NaN, an overflow is +-inf, never a DuckDB
error; NaN propagates through least, greatest and the aggregates (IEEE's pow(NaN, 0) = pow(1, NaN) = 1 and
1/inf = 0 stay as they are). Nothing of the user's text reaches SQL: column references go through the caller's
`column` callback (which quotes them), numbers are printed from their float value, function names and
operators come from fixed tables.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

from linreg.errors import InputError

OPERATORS = ("+", "-", "*", "/", "^")

# name -> (fewest arguments, most arguments or None for no limit, how an error message shows its arguments)
FUNCTIONS = {
    "log": (1, 1, "x"), "log10": (1, 1, "x"), "exp": (1, 1, "x"), "sqrt": (1, 1, "x"), "abs": (1, 1, "x"),
    "pow": (2, 2, "x, y"), "least": (2, None, "x, y, ..."), "greatest": (2, None, "x, y, ..."),
}
AGGREGATES = {"sum": "sum", "mean": "avg", "min": "min", "max": "max"}  # name -> DuckDB (min: see _sql)

MAX_NESTING = 50   # parentheses, signs, powers and calls inside one another: keeps the parser's recursion bounded
MAX_DEPTH = 100    # levels of the tree (a long sum is a deep tree): keeps canonical/to_sql/evaluate bounded
MAX_SQL_TERMS = 10_000  # column and number references in the SQL of one expression (see to_sql)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_PUNCTUATION = "+-*/^(),"


# ---------------------------------------------------------------------------------------------- the tree


@dataclass(frozen=True)
class Number:
    """A literal: a finite double >= 0 (a negative number is Negate(Number))."""

    value: float

    def __post_init__(self):
        value = float(self.value)
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"Number needs a finite value >= 0 (negate it with Negate), got {self.value!r}")
        object.__setattr__(self, "value", value + 0.0)  # -0.0 -> 0.0


@dataclass(frozen=True)
class Column:
    """A reference to a column by its exact (case-sensitive) name."""

    name: str

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Column needs a non-empty name, got {self.name!r}")


@dataclass(frozen=True)
class Negate:
    """Unary minus."""

    operand: "Node"


@dataclass(frozen=True)
class Binary:
    """`left op right` with op one of + - * / ^."""

    op: str
    left: "Node"
    right: "Node"

    def __post_init__(self):
        if self.op not in OPERATORS:
            raise ValueError(f"Binary op must be one of {' '.join(OPERATORS)}, got {self.op!r}")


@dataclass(frozen=True)
class Call:
    """A function or aggregate call: lower-case name from FUNCTIONS or AGGREGATES, arguments as a tuple."""

    function: str
    args: tuple

    def __post_init__(self):
        object.__setattr__(self, "args", tuple(self.args))
        low, high = _arity(self.function)
        if low is None or not (low <= len(self.args) and (high is None or len(self.args) <= high)):
            raise ValueError(f"Call({self.function!r}) with {len(self.args)} argument(s): not a known function "
                             "with that many arguments")


Node = Number | Column | Negate | Binary | Call


def _arity(function: str) -> tuple[int | None, int | None]:
    if function in FUNCTIONS:
        return FUNCTIONS[function][:2]
    return (1, 1) if function in AGGREGATES else (None, None)


# ---------------------------------------------------------------------------------------------- errors


def _shown(text: str) -> str:
    """The text as messages show it: one character per character, so that a caret lines up (tabs, newlines
    and other unprintable characters become a space or '?')."""
    return "".join(c if c.isprintable() else " " if c.isspace() else "?" for c in text)


def _error(what: str, text: str, start: int, end: int, head: str, tail: str = "") -> InputError:
    """'<what>: <head> at character <start+1> of "<text>"<tail>', then the text and a caret line under
    characters start..end (one caret past the end for the end of the text)."""
    shown = _shown(text)
    carets = " " * start + "^" * max(1, end - start)
    return InputError(f'{what}: {head} at character {start + 1} of "{shown}"{tail}\n  {shown}\n  {carets}')


def _known_functions(aggregates: bool) -> str:
    known = "known functions: " + ", ".join(f"{name}({FUNCTIONS[name][2]})" for name in FUNCTIONS)
    if aggregates:
        known += "; aggregates: " + ", ".join(f"{name}(x)" for name in AGGREGATES)
    return known


# ---------------------------------------------------------------------------------------------- tokens


class _Token(NamedTuple):
    kind: str       # number, name, quoted, op, (, ), ",", end, error
    text: str       # the characters of the text (for error: the offending characters)
    start: int      # 0-based, end exclusive
    end: int
    value: object   # number: float; name, quoted: the name; error: the InputError to raise


def _tokenize(text: str, what: str) -> list[_Token]:
    """The tokens of `text`, ending with an 'end' token, or with an 'error' token at the first character
    that cannot start a token (the parser raises it when it gets there, so errors come left to right)."""
    tokens = []
    i, n = 0, len(text)

    def error(start, end, head, tail=""):
        tokens.append(_Token("error", text[start:end], start, end, _error(what, text, start, end, head, tail)))
        return tokens

    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c.isdigit() and c.isascii() or c == "." and i + 1 < n and text[i + 1] in "0123456789":
            match = _NUMBER.match(text, i)
            end = match.end()
            if end < n and (text[end].isalpha() or text[end] in "_."):
                while end < n and (text[end].isalnum() or text[end] in "_."):
                    end += 1
                return error(i, end, f"malformed number {text[i:end]!r}",
                             "; a number cannot run into a name or another number (write 2*x for a product)")
            value = float(match.group())
            if not math.isfinite(value):
                return error(i, end, f"number {match.group()!r}", " is not a finite double (too large)")
            tokens.append(_Token("number", match.group(), i, end, value))
            i = end
        elif c.isalpha() and c.isascii() or c == "_":
            match = _NAME.match(text, i)
            tokens.append(_Token("name", match.group(), i, match.end(), match.group()))
            i = match.end()
        elif c == '"':
            j, name = i + 1, []
            while True:
                if j >= n:
                    return error(i, n, f"unterminated quoted name {text[i:]!r}", "; close it with '\"'")
                if text[j] == '"':
                    if j + 1 < n and text[j + 1] == '"':
                        name.append('"')
                        j += 2
                        continue
                    break
                name.append(text[j])
                j += 1
            if not name:
                return error(i, j + 1, "empty quoted name '\"\"'", "; a quoted name has at least one character")
            tokens.append(_Token("quoted", text[i:j + 1], i, j + 1, "".join(name)))
            i = j + 1
        elif c == "-" and text.startswith("--", i):
            return error(i, i + 2, "unexpected '--'", " (an SQL comment?); write '- -' to negate a negative term")
        elif c in _PUNCTUATION:
            tokens.append(_Token("op" if c in OPERATORS else c, c, i, i + 1, None))
            i += 1
        else:
            tail = "; quote names with double quotes: \"max temp\"" if c in "'`" else \
                "; an expression has numbers, names, + - * / ^, parentheses and function calls"
            return error(i, i + 1, f"unexpected {c!r}", tail)
    tokens.append(_Token("end", "", n, n, None))
    return tokens


# ---------------------------------------------------------------------------------------------- parsing


def split_top_level(text: str) -> list[str]:
    """Split a list of expressions at the commas outside parentheses and double quotes; strip each part and
    drop empty ones. 'a, log(least(a, b)), "x,y"' -> ['a', 'log(least(a, b))', '"x,y"']."""
    parts, start, depth, quoted = [], 0, 0, False
    for i, c in enumerate(text):
        if c == '"':
            quoted = not quoted  # "" inside a quoted name toggles twice
        elif quoted:
            continue
        elif c == "(":
            depth += 1
        elif c == ")":
            depth = max(depth - 1, 0)
        elif c == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse(text: str, what: str = "--features", *, aggregates: bool = False) -> Node:
    """The tree of one expression. `what` names the option in error messages; `aggregates=True` allows (and
    requires around every column) sum, mean, min and max. Raises InputError for anything else."""
    parser = _Parser(text, what, aggregates)
    if parser.peek().kind == "end":
        raise _error(what, text, 0, 0, "empty expression", "; give a column name, a number or a formula")
    node, _ = parser.expr()
    token = parser.peek()
    if token.kind != "end":
        tail = "; it closes no '('" if token.kind == ")" else \
            "; a comma separates function arguments only" if token.kind == "," else \
            "; expected an operator (+ - * / ^) or the end"
        raise parser.unexpected(token, tail)
    return node


class _Parser:
    """Recursive descent over the tokens; each rule returns (node, depth of the tree)."""

    def __init__(self, text: str, what: str, aggregates: bool):
        self.text, self.what, self.aggregates = text, what, aggregates
        self.tokens = _tokenize(text, what)
        self.i = 0
        self.nesting = 0
        self.aggregate: _Token | None = None  # the aggregate call being parsed (its name token)

    def error(self, start: int, end: int, head: str, tail: str = "") -> InputError:
        return _error(self.what, self.text, start, end, head, tail)

    def unexpected(self, token: _Token, tail: str) -> InputError:
        if token.kind == "end":
            return self.error(token.start, token.end, "unexpected end of text", tail)
        return self.error(token.start, token.end, f"unexpected {token.text!r}", tail)

    def peek(self, ahead: int = 0) -> _Token:
        token = self.tokens[min(self.i + ahead, len(self.tokens) - 1)]
        if token.kind == "error":
            raise token.value
        return token

    def next(self) -> _Token:
        token = self.peek()
        self.i += 1
        return token

    def deeper(self, token: _Token, *depths: int) -> int:
        depth = max(depths) + 1
        if depth > MAX_DEPTH:
            raise self.error(token.start, token.end, f"{token.text!r}",
                             f" makes the expression too deep (more than {MAX_DEPTH} levels)")
        return depth

    def is_op(self, ops: str) -> bool:
        token = self.peek()
        return token.kind == "op" and token.text in ops

    def expr(self):
        node, depth = self.term()
        while self.is_op("+-"):
            op = self.next()
            right, right_depth = self.term()
            node, depth = Binary(op.text, node, right), self.deeper(op, depth, right_depth)
        return node, depth

    def term(self):
        node, depth = self.unary()
        while self.is_op("*/"):
            op = self.next()
            right, right_depth = self.unary()
            node, depth = Binary(op.text, node, right), self.deeper(op, depth, right_depth)
        return node, depth

    def unary(self):
        token = self.peek()
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                text = repr(token.text) if token.kind != "end" else "the end"
                raise self.error(token.start, token.end, text,
                                 f" is nested too deeply (more than {MAX_NESTING} levels of parentheses, signs, "
                                 "powers and calls)")
            if self.is_op("+-"):
                self.next()
                operand, depth = self.unary()
                return (operand, depth) if token.text == "+" else (Negate(operand), self.deeper(token, depth))
            return self.power()
        finally:
            self.nesting -= 1

    def power(self):
        base, depth = self.atom()
        if self.is_op("^"):
            op = self.next()
            exponent, exponent_depth = self.unary()
            return Binary("^", base, exponent), self.deeper(op, depth, exponent_depth)
        return base, depth

    def atom(self):
        token = self.next()
        if token.kind == "number":
            return Number(token.value), 0
        if token.kind == "name" and self.peek().kind == "(":
            return self.call(token)
        if token.kind in ("name", "quoted"):
            return self.column(token), 0
        if token.kind == "(":
            node, depth = self.expr()
            self.close(token, "; expected an operator or ')'")
            return node, depth
        raise self.unexpected(token, "; expected a number, a name or '('")

    def close(self, opening: _Token, tail: str) -> _Token:
        token = self.peek()
        if token.kind == ")":
            return self.next()
        if token.kind == "end":
            raise self.error(opening.start, opening.end, "'('", " is never closed; add ')'")
        raise self.unexpected(token, tail)

    def column(self, token: _Token) -> Column:
        if self.aggregates and self.aggregate is None:
            name = token.value
            raise self.error(token.start, token.end, f"column {name!r}",
                             f": {name!r} must be inside an aggregate ({', '.join(AGGREGATES)}), "
                             f"e.g. mean({quote_name(name)})")
        return Column(token.value)

    def call(self, name: _Token):
        function = name.text.lower()
        is_aggregate = function in AGGREGATES and self.aggregates
        if function not in FUNCTIONS and not is_aggregate:
            tail = f"; {_known_functions(self.aggregates)}"
            if function in AGGREGATES:
                tail = (f"; {function} is an aggregate: aggregates ({', '.join(AGGREGATES)}) belong in --aggregate"
                        + (" (for the smaller or larger of values use least or greatest)"
                           if function in ("min", "max") else "") + tail)
            raise self.error(name.start, name.end, f"unknown function {name.text!r}", tail)
        if is_aggregate and self.aggregate is not None:
            outer = self.aggregate
            raise self.error(name.start, name.end, f"aggregate {name.text!r}",
                             f" is inside another aggregate ({outer.text!r} at character {outer.start + 1}); "
                             "aggregates cannot be nested")
        opening = self.next()
        if is_aggregate:
            self.aggregate = name
        args, depths = [], [0]
        if self.peek().kind != ")":
            while True:
                arg, depth = self.expr()
                args.append(arg)
                depths.append(depth)
                if self.peek().kind != ",":
                    break
                self.next()
        closing = self.close(opening, "; expected an operator, ',' or ')'")
        if is_aggregate:
            self.aggregate = None
        low, high = _arity(function)
        if len(args) < low or (high is not None and len(args) > high):
            wanted = f"{low} argument{'s' if low > 1 else ''}" if low == high else f"{low} or more arguments"
            signature = f"{function}({FUNCTIONS[function][2] if function in FUNCTIONS else 'x'})"
            raise self.error(name.start, closing.end, f"function {name.text!r}",
                             f" takes {wanted} ({signature}), got {len(args)}; {_known_functions(self.aggregates)}")
        return Call(function, tuple(args)), self.deeper(name, *depths)


# ---------------------------------------------------------------------------------------------- printing

# how tightly each form binds: sums 1, products 2, negation 3, powers 4, atoms (numbers, names, calls) 5
_LEVEL = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4}


def quote_name(name: str) -> str:
    """A column name as canonical form prints it: bare if it matches [A-Za-z_][A-Za-z0-9_]* and is not a
    function or aggregate name (ignoring case), else double-quoted with " doubled."""
    if _NAME.fullmatch(name) and name.lower() not in FUNCTIONS and name.lower() not in AGGREGATES:
        return name
    return '"' + name.replace('"', '""') + '"'


def _format_number(value: float) -> str:
    """The shortest text that reads back to `value`: integral values below 1e16 without '.0', else repr."""
    value = float(value)
    if value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    return repr(value)


def canonical(node: Node) -> str:
    """The normal form of a tree: no spaces (but '- -' for a double minus), parentheses only where needed."""
    return _canonical(node)[0]


def _canonical(node: Node) -> tuple[str, int]:
    if isinstance(node, Number):
        return _format_number(node.value), 5
    if isinstance(node, Column):
        return quote_name(node.name), 5
    if isinstance(node, Call):
        return f"{node.function}({','.join(_canonical(a)[0] for a in node.args)})", 5
    if isinstance(node, Negate):
        text = _operand(node.operand, 3)
        return ("- " if text.startswith("-") else "-") + text, 3
    if isinstance(node, Binary):
        level = _LEVEL[node.op]
        if node.op == "^":  # the base is an atom; the exponent may be signed and is right-associative
            left, right = _operand(node.left, 5), _operand(node.right, 3)
        else:  # left-associative: the right operand binds tighter
            left, right = _operand(node.left, level), _operand(node.right, level + 1)
        space = " " if node.op == "-" and right.startswith("-") else ""  # '--' is refused
        return f"{left}{node.op}{space}{right}", level
    raise TypeError(f"not an expression node: {node!r}")


def _operand(node: Node, least_level: int) -> str:
    text, level = _canonical(node)
    return text if level >= least_level else f"({text})"


# ---------------------------------------------------------------------------------------------- questions


def _walk(node: Node):
    yield node
    children = (node.operand,) if isinstance(node, Negate) else (node.left, node.right) \
        if isinstance(node, Binary) else node.args if isinstance(node, Call) else ()
    for child in children:
        yield from _walk(child)


def column_names(node: Node) -> list[str]:
    """The column names the expression references, in order of first appearance, each once."""
    return list(dict.fromkeys(n.name for n in _walk(node) if isinstance(n, Column)))


def has_aggregate(node: Node) -> bool:
    """True if the expression calls sum, mean, min or max."""
    return any(isinstance(n, Call) and n.function in AGGREGATES for n in _walk(node))


# ---------------------------------------------------------------------------------------------- SQL

_NAN = "CAST('NaN' AS DOUBLE)"
_ZERO = "CAST(0.0 AS DOUBLE)"


def _number_sql(value: float) -> str:
    return f"CAST({float(value)!r} AS DOUBLE)"  # a bare 2000.0 would be a DECIMAL


def _nonzero(sql: str) -> str:
    """`sql`, with 0 (and -0) replaced by NaN; the argument appears once, so nesting does not grow the text."""
    return f"coalesce(NULLIF({sql}, {_ZERO}), {_NAN})"


def to_sql(node: Node, column: Callable[[str], str]) -> str:
    """DuckDB SQL computing the expression as DOUBLE, fully parenthesized. `column(name)` returns the SQL of a
    column reference (the caller quotes it, e.g. w."temp"). Domain violations give NaN and overflows +-inf as
    `evaluate` does, never an error (DuckDB 2.0's ln, log10 and sqrt of negatives and pow of a negative base
    to a non-integer power are NaN already; zero divisors, logs of 0 and 0 to a negative power are turned into
    NaN here). least/greatest/min propagate NaN (DuckDB's least and min skip it). Raises InputError when the
    SQL would hold more than MAX_SQL_TERMS references (only nested powers with non-constant exponents grow it)."""
    terms = _sql_terms(node)
    if terms > MAX_SQL_TERMS:
        raise InputError(f"The expression {canonical(node)} is too large for SQL ({terms} column and number "
                         f"references; at most {MAX_SQL_TERMS}): it nests powers with non-constant exponents "
                         "too deeply. Simplify it.")
    return _sql(node, column)


def _general_pow(node: Node) -> bool:
    """A power whose 0-to-a-negative-power case can only be decided at run time (CASE repeats its operands)."""
    if isinstance(node, Binary) and node.op == "^":
        base, exponent = node.left, node.right
    elif isinstance(node, Call) and node.function == "pow":
        base, exponent = node.args
    else:
        return False
    return not isinstance(exponent, Number) and not (isinstance(base, Number) and base.value != 0)


def _sql_terms(node: Node) -> int:
    """How many column and number references the SQL of `node` holds."""
    if isinstance(node, (Number, Column)):
        return 1
    children = (node.operand,) if isinstance(node, Negate) else (node.left, node.right) \
        if isinstance(node, Binary) else node.args
    terms = sum(_sql_terms(c) for c in children)
    return 2 * terms if _general_pow(node) else terms


def _pow_sql(base: Node, exponent: Node, b: str, e: str) -> str:
    if isinstance(exponent, Number):
        return f"pow({b}, {e})" if exponent.value >= 0 else f"pow({_nonzero(b)}, {e})"
    if isinstance(base, Number) and base.value != 0:
        return f"pow({b}, {e})"
    return f"(CASE WHEN {b} = {_ZERO} AND {e} < {_ZERO} THEN {_NAN} ELSE pow({b}, {e}) END)"


def _sql(node: Node, column: Callable[[str], str]) -> str:
    if isinstance(node, Number):
        return _number_sql(node.value)
    if isinstance(node, Column):
        return f"CAST({column(node.name)} AS DOUBLE)"
    if isinstance(node, Negate):
        return f"(-{_sql(node.operand, column)})"  # every operand SQL starts with '(' or a letter: never '--'
    if isinstance(node, Binary):
        left, right = _sql(node.left, column), _sql(node.right, column)
        if node.op == "^":
            return _pow_sql(node.left, node.right, left, right)
        if node.op == "/" and not (isinstance(node.right, Number) and node.right.value != 0):
            right = _nonzero(right)
        return f"({left} {node.op} {right})"
    if isinstance(node, Call):
        args = [_sql(a, column) for a in node.args]
        f = node.function
        positive_number = isinstance(node.args[0], Number) and node.args[0].value > 0
        if f in ("log", "log10"):
            return f"{'ln' if f == 'log' else 'log10'}({args[0] if positive_number else _nonzero(args[0])})"
        if f in ("exp", "sqrt", "abs"):
            return f"{f}({args[0]})"
        if f == "pow":
            return _pow_sql(node.args[0], node.args[1], args[0], args[1])
        if f == "greatest":
            return f"greatest({', '.join(args)})"
        if f == "least":  # DuckDB orders NaN above every number: least would skip a NaN, greatest keeps it
            return f"(-greatest({', '.join(f'(-{a})' for a in args)}))"
        if f == "min":  # the same for the aggregate: min skips NaN, max keeps it
            return f"(-max((-{args[0]})))"
        return f"{AGGREGATES[f]}({args[0]})"
    raise TypeError(f"not an expression node: {node!r}")
