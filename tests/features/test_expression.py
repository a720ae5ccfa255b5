"""The feature expression language: parsing, canonical form, refusals, and SQL (DuckDB) against NumPy."""

import re

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from linreg.errors import InputError
from linreg.features.expression import (AGGREGATES, FUNCTIONS, MAX_DEPTH, MAX_NESTING, OPERATORS, Binary, Call,
                                        Column, Negate, Number, _tokenize, canonical, column_names, has_aggregate,
                                        parse, quote_name, split_top_level, to_sql)
from linreg.features.evaluate import evaluate

x, a, b, c = Column("x"), Column("a"), Column("b"), Column("c")


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def qualified(name: str) -> str:
    return "t." + quote(name)


# ---------------------------------------------------------------------------------------------- canonical form


@pytest.mark.parametrize("text, expected", [
    ("temp ^ 2", "temp^2"), ("temp * rainfall", "temp*rainfall"), ("year - 2000", "year-2000"),
    ("log(rainfall + 1)", "log(rainfall+1)"), ("(a+b)*c", "(a+b)*c"), ("a+(b+c)", "a+(b+c)"),
    ("a-(b-c)", "a-(b-c)"), ("(a^b)^c", "(a^b)^c"), ("a^(b^c)", "a^b^c"), ("-x^2", "-x^2"), ("(-x)^2", "(-x)^2"),
    ("x^-2", "x^-2"), ("-(a+b)", "-(a+b)"), ("+a", "a"), ("2.50e1", "25"), ("LOG(x)", "log(x)"),
    ('"max temp" * 2', '"max temp"*2'),
    # more: spaces where '--' would appear, names that must be quoted, numbers, calls
    ("a - -b", "a- -b"), ("- - a", "- -a"), ("a*(b*c)", "a*(b*c)"), ("(a*b)*c", "a*b*c"), ("a/(b/c)", "a/(b/c)"),
    ("(a-b)-c", "a-b-c"), ("-(a*b)", "-(a*b)"), ("(-a)*b", "-a*b"), ("a*-b", "a*-b"), ("2^-x^2", "2^-x^2"),
    ("(2^x)^-1", "(2^x)^-1"), ("log", '"log"'), ("log+1", '"log"+1'), ('"log" + "LOG"', '"log"+"LOG"'),
    ('"plain"', "plain"),
    ('"a""b"', '"a""b"'), ('"sum"', '"sum"'), ("1e-5", "1e-05"), ("1E20", "1e+20"), ("0.50", "0.5"),
    (".5", "0.5"), ("12.", "12"), ("2000.0", "2000"), ("1e16", "1e+16"), ("9999999999999998", "9999999999999998"),
    ("pow( x , 2 )", "pow(x,2)"), ("GREATEST(a, b, c)", "greatest(a,b,c)"), ("log (x)", "log(x)"),
    (" \t a\n+ b ", "a+b"), ("-2", "-2"), ("1e-320", "1e-320"),
])
def test_canonical_form(text, expected):
    assert canonical(parse(text)) == expected
    assert canonical(parse(expected)) == expected


def test_canonical_form_of_a_feature_list():
    parts = split_top_level("temp, temp^2, rainfall, temp*rainfall, log(rainfall + 1), year - 2000")
    assert [canonical(parse(p)) for p in parts] == \
        ["temp", "temp^2", "rainfall", "temp*rainfall", "log(rainfall+1)", "year-2000"]


@pytest.mark.parametrize("text, parts", [
    ('a, log(least(a, b)), "x,y"', ["a", "log(least(a, b))", '"x,y"']),
    ("a,,b,", ["a", "b"]), ("", []), (" , ", []), ('"a"",(b", c', ['"a"",(b"', "c"]),
    ("pow(a, b), greatest(a, b, c)", ["pow(a, b)", "greatest(a, b, c)"]), ("a), b", ["a)", "b"]),
])
def test_split_top_level(text, parts):
    assert split_top_level(text) == parts


def test_precedence_and_associativity():
    two = Number(2)
    assert parse("-x^2") == Negate(Binary("^", x, two))
    assert parse("(-x)^2") == Binary("^", Negate(x), two)
    assert parse("x^-2") == Binary("^", x, Negate(two))
    assert parse("a^b^c") == Binary("^", a, Binary("^", b, c))
    assert parse("a-b-c") == Binary("-", Binary("-", a, b), c)
    assert parse("a/b/c") == Binary("/", Binary("/", a, b), c)
    assert parse("a+b*c") == Binary("+", a, Binary("*", b, c))
    assert parse("-a*b") == Binary("*", Negate(a), b)
    assert parse("a*b^c") == Binary("*", a, Binary("^", b, c))
    assert parse("LOG(x)") == Call("log", (x,))
    assert parse("least(a, b, c)") == Call("least", (a, b, c))
    assert parse('"max temp"') == Column("max temp") and parse('"a""b"') == Column('a"b')
    assert parse("log") == Column("log")  # a function name without '(' is a column
    assert evaluate(parse("2*3^2"), {}) == 18
    assert evaluate(parse("-2^2"), {}) == -4
    assert evaluate(parse("2^3^2"), {}) == 512
    assert evaluate(parse("8-4-2"), {}) == 2 and evaluate(parse("8/4/2"), {}) == 1


def test_nodes_compare_by_value_and_check_themselves():
    assert parse("a+1") == Binary("+", Column("a"), Number(1)) and hash(parse("a+1")) == hash(parse("a + 1.0"))
    assert Number(-0.0) == Number(0) and canonical(Number(-0.0)) == "0" and Number(3).value == 3.0
    assert Call("log", [a]).args == (a,)
    for bad in (lambda: Number(-1), lambda: Number(float("inf")), lambda: Number(float("nan")), lambda: Column(""),
                lambda: Binary("%", a, b), lambda: Call("log", (a, b)), lambda: Call("foo", (a,)),
                lambda: Call("least", (a,)), lambda: Call("LOG", (a,))):
        with pytest.raises(ValueError):
            bad()


def test_quote_name_column_names_has_aggregate():
    assert [quote_name(n) for n in ["temp", "_x1", "log", "LOG", "Sum", "max temp", 'a"b', "1x", "é", "least"]] == \
        ["temp", "_x1", '"log"', '"LOG"', '"Sum"', '"max temp"', '"a""b"', '"1x"', '"é"', '"least"']
    assert column_names(parse('b + a*b + log("max temp") - a')) == ["b", "a", "max temp"]
    assert column_names(parse("2")) == []
    assert not has_aggregate(parse("log(a) + least(a, b)"))
    assert has_aggregate(parse("1 + max(a)", "--aggregate", aggregates=True))


# ---------------------------------------------------------------------------------------------- random trees

NAMES = ["a", "b", "x", "log", "LOG", "Sum", "max temp", 'q"uote', "_1"]
numbers = st.one_of(st.sampled_from([0.0, 1.0, 2.0, 0.5, 10.0, 1e-5, 1e20, 2000.0, 1e16, 123.456, 5e-324]),
                    st.floats(min_value=0, allow_nan=False, allow_infinity=False))
names = st.one_of(st.sampled_from(NAMES), st.text(min_size=1, max_size=6))
UNARY = [f for f, (low, high, _) in FUNCTIONS.items() if low == high == 1]


def extend(children):
    return st.one_of(
        children.map(Negate),
        st.tuples(st.sampled_from(OPERATORS), children, children).map(lambda t: Binary(*t)),
        st.tuples(st.sampled_from(UNARY), children).map(lambda t: Call(t[0], (t[1],))),
        st.tuples(children, children).map(lambda t: Call("pow", t)),
        st.tuples(st.sampled_from(["least", "greatest"]), st.lists(children, min_size=2, max_size=4))
        .map(lambda t: Call(t[0], tuple(t[1]))))


trees = st.recursive(st.one_of(numbers.map(Number), names.map(Column)), extend, max_leaves=16)
aggregate_calls = st.tuples(st.sampled_from(list(AGGREGATES)), trees).map(lambda t: Call(t[0], (t[1],)))
aggregate_trees = st.recursive(st.one_of(numbers.map(Number), aggregate_calls), extend, max_leaves=6)


@settings(max_examples=300, deadline=None)
@given(trees)
def test_canonical_round_trip(tree):
    text = canonical(tree)
    assert parse(text) == tree
    assert canonical(parse(text)) == text


@settings(max_examples=150, deadline=None)
@given(aggregate_trees)
def test_canonical_round_trip_with_aggregates(tree):
    text = canonical(tree)
    assert parse(text, "--aggregate", aggregates=True) == tree
    if has_aggregate(tree):
        with pytest.raises(InputError, match="unknown function"):
            parse(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees, st.data())
def test_whitespace_between_tokens_does_not_change_the_parse(tree, data):
    text = canonical(tree)
    tokens = _tokenize(text, "--features")
    assert tokens[-1].kind == "end"
    pieces = [text[:tokens[0].start]]
    for token, following in zip(tokens, tokens[1:]):
        pieces.append(text[token.start:following.start])
        pieces.append(data.draw(st.sampled_from(["", " ", "\t", "\n", "  \n "])))
    assert parse("".join(pieces)) == tree


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("text, aggregates, position, token, fragment", [
    ("foo(x)", False, 1, "'foo'", "unknown function"),
    ("pow(x)", False, 1, "'pow'", "takes 2 arguments"),
    ("least(x)", False, 1, "'least'", "takes 2 or more arguments"),
    ("log(a, b)", False, 1, "'log'", "takes 1 argument"),
    ("log()", False, 1, "'log'", "got 0"),
    ("temp; DROP TABLE weather", False, 5, "';'", "unexpected"),
    ("temp' OR '1'='1", False, 5, "\"'\"", "double quotes"),
    ("temp -- comment", False, 6, "'--'", "unexpected"),
    ("1e999", False, 1, "'1e999'", "not a finite double"),
    ("2x", False, 1, "'2x'", "malformed number"),
    ("a + 1e5b", False, 5, "'1e5b'", "malformed number"),
    ("1.2.3", False, 1, "'1.2.3'", "malformed number"),
    ("(temp", False, 1, "'('", "never closed"),
    ("log(temp", False, 4, "'('", "never closed"),
    ("temp)", False, 5, "')'", "closes no '('"),
    ("a, b", False, 2, "','", "unexpected"),
    ('""', False, 1, "'\"\"'", "empty quoted name"),
    ('a + "unterminated', False, 5, "'\"unterminated'", "unterminated quoted name"),
    ("", False, 1, "", "empty expression"),
    ("   ", False, 1, "", "empty expression"),
    ("a +", False, 4, "end of text", "expected a number"),
    ("a b", False, 3, "'b'", "expected an operator"),
    ("a = 1", False, 3, "'='", "unexpected"),
    ("a < b", False, 3, "'<'", "unexpected"),
    ("x[1]", False, 2, "'['", "unexpected"),
    ("a + .", False, 5, "'.'", "unexpected"),
    ("log(a,)", False, 7, "')'", "expected a number"),
    ('"log"(a)', False, 6, "'('", "expected an operator"),
    ("a ** 2", False, 4, "'*'", "unexpected"),
    ("a /* c */", False, 4, "'*'", "unexpected"),
    ("sum(temp)", False, 1, "'sum'", "belong in --aggregate"),
    ("min(a, b)", False, 1, "'min'", "least or greatest"),
    ("temp + sum(x)", True, 1, "'temp'", "'temp' must be inside an aggregate (sum, mean, min, max)"),
    ("sum(x) + log(temp)", True, 14, "'temp'", "must be inside an aggregate"),
    ("sum(sum(x))", True, 5, "'sum'", "inside another aggregate"),
    ("mean(1 + max(x))", True, 10, "'max'", "inside another aggregate"),
    ("sum(a, b)", True, 1, "'sum'", "takes 1 argument"),
    ("median(x)", True, 1, "'median'", "aggregates: sum(x), mean(x), min(x), max(x)"),
])
def test_refusals_name_the_option_and_point_at_the_fault(text, aggregates, position, token, fragment):
    what = "--aggregate" if aggregates else "--features"
    with pytest.raises(InputError) as info:
        parse(text, what, aggregates=aggregates)
    message = str(info.value)
    first, shown, carets = message.split("\n")
    assert first.startswith(f"{what}: ")
    assert f'at character {position} of "{text}"' in first
    assert token in first and fragment in first
    assert shown == "  " + text
    assert carets.index("^") == position + 1 and set(carets[2:position + 1]) <= {" "}
    assert info.value.exit_code == 2 and isinstance(info.value, ValueError)


def test_refusals_list_the_known_functions_and_underline_the_whole_token():
    message = str(pytest.raises(InputError, parse, "a + foo(x)").value)
    assert all(f"{name}(" in message for name in FUNCTIONS) and "sum(" not in message
    assert message.splitlines()[2] == "      ^^^"
    message = str(pytest.raises(InputError, parse, "pow(x) * 2").value)
    assert message.splitlines()[2] == "  ^^^^^^" and "pow(x, y)" in message


def test_the_first_fault_from_the_left_is_reported():
    assert "')'" in str(pytest.raises(InputError, parse, "a) ; b").value)
    assert "'foo'" in str(pytest.raises(InputError, parse, "foo(a;)").value)


def test_messages_keep_the_caret_under_the_fault_with_tabs_and_newlines():
    message = str(pytest.raises(InputError, parse, "a\t+\n;").value)
    first, shown, carets = message.split("\n")
    assert shown == "  a + ;" and carets == "      ^" and "at character 5" in first


def test_nesting_and_depth_are_bounded():
    deep = "(" * (MAX_NESTING + 5) + "a" + ")" * (MAX_NESTING + 5)
    assert "nested too deeply" in str(pytest.raises(InputError, parse, deep).value)
    assert "too deep" in str(pytest.raises(InputError, parse, "+".join(["a"] * (MAX_DEPTH + 5))).value)
    ok = "+".join(["a"] * (MAX_DEPTH - 5))
    assert canonical(parse(ok)) == ok
    assert parse("(" * 20 + "a" + ")" * 20) == a


def test_text_is_never_evaluated_as_python_or_sql():
    for text in ["__import__('os')", "a.b", "a@b", "a % b", "a | b", "a & b", "a !b", "a $b", "a ? b", "a \\ b",
                 "a{b}", "a:b", "`a`", "a # b", "a ~ b"]:
        with pytest.raises(InputError):
            parse(text)


# ---------------------------------------------------------------------------------------------- NumPy

def test_evaluate_the_example_features_against_numpy():
    rng = np.random.default_rng(3)
    temp, rainfall = rng.uniform(-10, 40, 50), rng.uniform(0, 200, 50)
    year = rng.integers(1990, 2030, 50)
    values = {"temp": temp, "rainfall": rainfall, "year": year}
    expected = [temp, temp ** 2, rainfall, temp * rainfall, np.log(rainfall + 1), year - 2000.0]
    texts = split_top_level("temp, temp^2, rainfall, temp*rainfall, log(rainfall + 1), year - 2000")
    for text, want in zip(texts, expected):
        got = evaluate(parse(text), values)
        assert got.dtype == np.float64 and got.shape == (50,)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


def test_evaluate_domain_edges():
    v = {"x": np.array([0.0, -0.0, -1.0, 1.0, 4.0])}
    nan, inf = np.nan, np.inf
    cases = {"log(x)": [nan, nan, nan, 0, np.log(4)], "log10(x)": [nan, nan, nan, 0, np.log10(4)],
             "sqrt(x)": [0, 0, nan, 1, 2], "1/x": [nan, nan, -1, 1, 0.25], "x^-1": [nan, nan, -1, 1, 0.25],
             "x^0.5": [0, 0, nan, 1, 2], "pow(x, -0.5)": [nan, nan, nan, 1, 0.5], "0^(x-1)": [nan, nan, nan, 1, 0],
             "greatest(log(x), 0)": [nan, nan, nan, 0, np.log(4)], "least(x, 1/x)": [nan, nan, -1, 1, 0.25],
             "exp(x*1000)": [1, 1, 0, inf, inf], "1e200*1e200*x": [nan, nan, -inf, inf, inf]}
    for text, want in cases.items():
        np.testing.assert_array_equal(evaluate(parse(text), v), np.array(want, dtype=float), err_msg=text)


def test_evaluate_broadcasts_and_refuses_aggregates_and_unknown_columns():
    np.testing.assert_array_equal(evaluate(parse("2"), {"a": np.zeros(3)}), [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(evaluate(parse("a + 1"), {"a": [1, 2], "b": np.zeros(2)}), [2.0, 3.0])
    with pytest.raises(InputError, match="aggregate"):
        evaluate(parse("sum(a)", aggregates=True), {"a": np.zeros(3)})
    with pytest.raises(InputError, match="'b'"):
        evaluate(parse("a + b"), {"a": np.zeros(3)})


# ---------------------------------------------------------------------------------------------- SQL

SPECIAL = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, 29.5, -7.25, 1e-300, 1e200, -1e200, 700.0, 710.0,
           -700.0, 1000.0, 0.1, 12345.678]


@pytest.fixture(scope="module")
def table():
    """Columns a, b, c, "max temp", "log" with zeros, negatives, tiny and huge values, and (row order) i."""
    rng = np.random.default_rng(7)
    special = np.array(SPECIAL)
    a = np.concatenate([special, special, rng.uniform(-50, 50, 20)])
    b = np.concatenate([special, [0.0, -1.0, 2.0, 0.5, -0.5, 3.0, 1.5, -1.5, 0.25, 10.0, -3.0, 2.5, 1.0, -2.0, 0.0,
                                  0.75, -0.25, 1.25, 4.0, -4.0], rng.uniform(-3, 3, 20)])
    c = rng.permutation(a)
    values = {"a": a, "b": b, "c": c, "max temp": rng.uniform(-10, 40, a.size), "log": rng.uniform(0.1, 9, a.size)}
    con = duckdb.connect()
    con.register("t", pa.table({"i": np.arange(a.size), **values}))
    return con, values


def run_sql(con, node) -> np.ndarray:
    sql = to_sql(node, qualified)
    result = con.sql(f"SELECT {sql} AS v FROM t ORDER BY i").to_arrow_table().column("v")
    assert result.null_count == 0  # NaN, never NULL
    return result.to_numpy()


def assert_same(got, want, text, rtol=1e-12):
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=f"finite pattern of {text}")
    np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=f"NaN and inf of {text}")
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=0, err_msg=text)


SQL_CASES = [
    "a", "a^2", "a*b", "log(c + 1)", "a - 2000", "log(a)", "log10(a)", "exp(a)", "exp(-a)", "sqrt(a)", "abs(-a)",
    "pow(a, b)", "a^b", "a^-2", "a^0.5", "2^a", "0^b", "b^-a", "a^b^c", "(a^b)^c", "pow(a, 0)", "a/b", "a/0",
    "(a+b)/(a-b)", "least(a, b)", "greatest(a, b, c)", "least(log(a), 5)", "greatest(log(a), 0)",
    "least(sqrt(a), b, 1/c)", "-a^2", "(-a)^2", "1e200*a*a", "exp(a)*0", "log10(abs(a)+1)", "sqrt(a*a+b*b)",
    'greatest(least("max temp", 29) - 10, 0)', '"log" * 2', 'log("log") + LOG10("max temp")', "exp(a/100)",
    "a/(b*0)", "- -a", "abs(a)^1.5", "pow(abs(b), 1/3)", "1/(a - a)", "a - a", "(a + 1e308) + 1e308",
]


@pytest.mark.parametrize("text", SQL_CASES)
def test_sql_matches_evaluate(table, text):
    con, values = table
    node = parse(text)
    assert_same(run_sql(con, node), evaluate(node, values), text)


def test_every_function_is_covered_by_the_sql_cases():
    called = {n.function for text in SQL_CASES for n in _nodes(parse(text)) if isinstance(n, Call)}
    assert called == set(FUNCTIONS)


def _nodes(node):
    yield node
    for child in (node.operand,) if isinstance(node, Negate) else (node.left, node.right) \
            if isinstance(node, Binary) else node.args if isinstance(node, Call) else ():
        yield from _nodes(child)


# Random trees of the operations NumPy and DuckDB both round correctly (so results agree to the bit, without
# a libm's last-place differences making a cancellation look like a mismatch): + - * /, sqrt, abs, least,
# greatest, negation; log, exp and pow are compared on the fixed cases above.
exact_leaves = st.one_of(st.sampled_from(["a", "b", "c", "max temp"]).map(Column),
                         st.sampled_from([0.0, 1.0, 2.0, 0.5, 3.0, 1e-300, 1e200, 29.0]).map(Number))


def exact_extend(children):
    return st.one_of(
        children.map(Negate),
        st.tuples(st.sampled_from(["+", "-", "*", "/"]), children, children).map(lambda t: Binary(*t)),
        st.tuples(st.sampled_from(["sqrt", "abs"]), children).map(lambda t: Call(t[0], (t[1],))),
        st.tuples(st.sampled_from(["least", "greatest"]), st.lists(children, min_size=2, max_size=3))
        .map(lambda t: Call(t[0], tuple(t[1]))))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.recursive(exact_leaves, exact_extend, max_leaves=10))
def test_sql_matches_evaluate_on_random_trees(table, tree):
    con, values = table
    assert_same(run_sql(con, tree), evaluate(tree, values), canonical(tree), rtol=0)


SQL_WORDS = {"CAST", "AS", "DOUBLE", "ln", "log10", "exp", "sqrt", "abs", "pow", "greatest", "coalesce", "NULLIF",
             "CASE", "WHEN", "THEN", "ELSE", "END", "AND", "sum", "avg", "max", "PLACEHOLDER"}


@settings(max_examples=200, deadline=None)
@given(st.one_of(trees, aggregate_trees))
def test_sql_holds_no_user_text(tree):
    seen = []
    try:
        sql = to_sql(tree, lambda name: seen.append(name) or "PLACEHOLDER")
    except InputError as exc:  # many nested powers with non-constant exponents
        assert "too large for SQL" in str(exc)
        assume(False)
    assert seen == [n.name for n in _nodes(tree) if isinstance(n, Column)]
    rest = re.sub(r"CAST\((?:[0-9.e+-]+|'NaN') AS DOUBLE\)", "", sql)  # numbers, formatted from floats
    assert set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", rest)) <= SQL_WORDS
    assert set(rest) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_ (),+-*/=<")
    assert "--" not in sql and "/*" not in sql


def test_sql_injection_goes_only_through_the_column_callback(table):
    name = 'a"; DROP TABLE t; --'
    text = '"a""; DROP TABLE t; --" * 2 + log("a""; DROP TABLE t; --")'
    node = parse(text)
    assert column_names(node) == [name]
    seen = []
    sql = to_sql(node, lambda n: seen.append(n) or "PLACEHOLDER")
    assert seen == [name, name] and sql.count("PLACEHOLDER") == 2
    assert "DROP" not in sql and ";" not in sql and "--" not in sql and '"' not in sql
    con = duckdb.connect()
    values = np.array([1.0, 2.0, 0.0])
    con.register("t", pa.table({name: values}))
    got = con.sql(f"SELECT {to_sql(node, quote)} FROM t").to_arrow_table().column(0).to_numpy()
    assert_same(got, evaluate(node, {name: values}), text)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (3,)


def test_sql_is_double_and_numbers_are_never_decimals():
    con = duckdb.connect()
    node = parse("2000.5 + 0.1 * year - 2000")
    sql = to_sql(node, lambda n: "CAST(2001 AS INTEGER)")
    assert con.execute(f"SELECT typeof({sql}), {sql}").fetchone() == ("DOUBLE", evaluate(node, {"year": [2001]})[0])
    assert "CAST(2000.5 AS DOUBLE)" in sql and "CAST(0.1 AS DOUBLE)" in sql


def test_sql_size_is_bounded():
    with pytest.raises(InputError, match="too large for SQL"):
        to_sql(parse("^".join(["a"] * 20)), quote)
    assert len(to_sql(parse("^".join(["a"] * 6)), quote)) < 20_000


# ---------------------------------------------------------------------------------------------- aggregates


@pytest.fixture(scope="module")
def daily():
    rng = np.random.default_rng(11)
    n = 400
    frame = pd.DataFrame({"region": rng.choice(["north", "south", "east", "west", "x\"y"], n),
                          "year": rng.integers(2000, 2004, n), "temp": rng.uniform(-5, 38, n),
                          "rainfall": rng.uniform(0, 30, n)})
    con = duckdb.connect()
    con.register("w", pa.Table.from_pandas(frame, preserve_index=False))
    return con, frame


def grouped_sql(con, node) -> pd.Series:
    sql = to_sql(node, lambda n: "w." + quote(n))
    out = con.execute(f"SELECT region, year, {sql} AS v FROM w GROUP BY region, year ORDER BY region, year").df()
    return out.set_index(["region", "year"])["v"]


@pytest.mark.parametrize("text, reference", [
    ("sum(greatest(least(temp, 29) - 10, 0))", lambda f, g: g(f.temp.clip(upper=29).sub(10).clip(lower=0)).sum()),
    ("sum(rainfall)/10", lambda f, g: g(f.rainfall).sum() / 10),
    ("max(temp)-min(temp)", lambda f, g: g(f.temp).max() - g(f.temp).min()),
    ("mean(log(rainfall + 1))", lambda f, g: g(np.log(f.rainfall + 1)).mean()),
    ("sqrt(mean(temp^2))", lambda f, g: np.sqrt(g(f.temp ** 2).mean())),
])
def test_aggregate_sql_matches_pandas(daily, text, reference):
    con, frame = daily
    node = parse(text, "--aggregate", aggregates=True)
    got = grouped_sql(con, node)
    want = reference(frame, lambda s: s.groupby([frame.region, frame.year])).sort_index()
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-12, atol=0)


def test_aggregates_propagate_nan(daily):
    """A domain error in one row makes its group's aggregate NaN, also for min (DuckDB's min skips NaN)."""
    con, frame = daily
    reducers = {"sum": np.sum, "mean": np.mean, "min": np.min, "max": np.max}
    for function in AGGREGATES:
        node = parse(f"{function}(log(temp + 4))", "--aggregate", aggregates=True)
        got = grouped_sql(con, node)
        inner = evaluate(node.args[0], {"temp": frame.temp.to_numpy()})
        bad = 0
        for (region, year), value in got.items():
            rows = (frame.region == region).to_numpy() & (frame.year == year).to_numpy()
            want = reducers[function](inner[rows])
            assert np.isnan(value) == np.isnan(want), (function, region, year)
            bad += bool(np.isnan(want))
            if not np.isnan(want):
                assert value == pytest.approx(want, rel=1e-12, abs=0)
        assert 0 < bad < len(got)  # some groups have a row with temp <= -4, some do not
