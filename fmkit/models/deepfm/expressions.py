"""TorchEasyRec's ``expr_feature`` expressions, parsed into a tree and evaluated on numpy
columns — never handed to Python's ``eval``.

The grammar is the one TorchEasyRec documents (C-like, lowest precedence first)::

    expression := or ("?" expression ":" expression)?
    or  := and ("||" and)*          and := bor ("&&" bor)*
    bor := band ("|" band)*         band := cmp ("&" cmp)*
    cmp := sum (("<="|">="|"!="|"=="|"<"|">") sum)*
    sum := product (("+"|"-") product)*
    product := power (("*"|"/"|"%") power)*
    power := unary ("^" power)?     unary := ("-"|"+"|"!") unary | atom
    atom := number | variable | _pi | _e | function "(" arguments ")" | "(" expression ")"

Variables are the names of the feature's ``variables`` inputs (``"user:u_age"`` is ``u_age``);
functions are the scalar ones of TorchEasyRec's list (``log``, ``sqrt``, ``min``, ``max``,
``sigmoid``, ...). Comparisons and logic give 1.0 or 0.0. A division by zero gives what numpy
gives (inf or NaN), which the feature's ``default_value`` then replaces.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fmkit.data.numbers import FLOAT32_MAX
from fmkit.models.deepfm.config import ConfigError

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)"
                    r"|([A-Za-z_]\w*)|(\|\||&&|<=|>=|!=|==|[-+*/%^()<>?:,!|&]))")

_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "asin": np.arcsin, "acos": np.arccos,
    "atan": np.arctan, "sinh": np.sinh, "cosh": np.cosh, "tanh": np.tanh, "asinh": np.arcsinh,
    "acosh": np.arccosh, "atanh": np.arctanh, "log2": np.log2, "log10": np.log10,
    "log": np.log, "ln": np.log, "exp": np.exp, "sqrt": np.sqrt, "sign": np.sign,
    "abs": np.abs, "rint": np.rint, "floor": np.floor, "ceil": np.ceil, "trunc": np.trunc,
    "round": lambda x: np.sign(x) * np.floor(np.abs(x) + 0.5),  # half away from zero
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
}
_VARIADIC = {"min": np.minimum.reduce, "max": np.maximum.reduce, "sum": np.add.reduce,
             "avg": lambda xs: np.add.reduce(xs) / len(xs)}
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "%": np.fmod,
    "^": np.power, "<": np.less, ">": np.greater, "<=": np.less_equal,
    ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal,
    "&&": lambda a, b: (a != 0) & (b != 0), "||": lambda a, b: (a != 0) | (b != 0),
    "&": lambda a, b: np.bitwise_and(a.astype(np.int64), b.astype(np.int64)),
    "|": lambda a, b: np.bitwise_or(a.astype(np.int64), b.astype(np.int64)),
}
_LEVELS = [("||",), ("&&",), ("|",), ("&",), ("<=", ">=", "!=", "==", "<", ">"), ("+", "-"),
           ("*", "/", "%")]
_CONSTANTS = {"_pi": math.pi, "_e": math.e}


@dataclass
class Expression:
    """A parsed expression: ``evaluate`` maps each variable's float64 column to the result."""

    text: str
    tree: tuple
    variables: frozenset[str]

    def evaluate(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        """The result of every row; NaN where it is not a float32 number (a missing input, a
        division by zero, an overflow such as ``exp(100)``): the feature's default value,
        never an infinity in the network, which computes in float32."""
        with np.errstate(all="ignore"):
            result = np.array(_evaluate(self.tree, columns), np.float64)
            result[~(np.abs(result) <= FLOAT32_MAX)] = np.nan
        return result


def parse(text: str, variables: list[str], where: str) -> Expression:
    """``text`` parsed against the allowed names; a ConfigError naming ``where`` and the
    offending token otherwise."""
    tokens: list[tuple[str, str]] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _TOKEN.match(stripped, position)
        if not match:
            raise ConfigError(f"{where}: cannot read {stripped[position:position + 10]!r} "
                              f"(at character {position + 1})")
        number, name, operator = match.groups()
        tokens.append(("number", number) if number else ("name", name) if name
                      else ("op", operator))
        position = match.end()
    parser = _Parser(tokens, set(variables), where)
    tree = parser.expression()
    if parser.position != len(tokens):
        raise ConfigError(f"{where}: unexpected {tokens[parser.position][1]!r}")
    return Expression(text, tree, frozenset(parser.used))


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], variables: set[str], where: str):
        self.tokens, self.variables, self.where = tokens, variables, where
        self.position, self.used = 0, set()

    def _peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise ConfigError(f"{self.where}: the expression ends too early")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise ConfigError(f"{self.where}: expected {expected!r}, got {token[1]!r}")
        self.position += 1
        return token

    def expression(self) -> tuple:
        condition = self._level(0)
        if self._peek() == "?":
            self._take("?")
            yes = self.expression()
            self._take(":")
            return ("if", condition, yes, self.expression())
        return condition

    def _level(self, level: int) -> tuple:
        if level == len(_LEVELS):
            return self._power()
        left = self._level(level + 1)
        while self._peek() in _LEVELS[level] and self.tokens[self.position][0] == "op":
            operator = self._take()[1]
            left = ("binary", operator, left, self._level(level + 1))
        return left

    def _power(self) -> tuple:
        base = self._unary()
        if self._peek() == "^":
            self._take()
            return ("binary", "^", base, self._power())
        return base

    def _unary(self) -> tuple:
        if self._peek() in ("-", "+", "!"):
            operator = self._take()[1]
            return ("unary", operator, self._unary())
        return self._atom()

    def _atom(self) -> tuple:
        kind, value = self._take()
        if kind == "number":
            return ("number", float(value))
        if value == "(":
            inner = self.expression()
            self._take(")")
            return inner
        if kind != "name":
            raise ConfigError(f"{self.where}: unexpected {value!r}")
        if self._peek() == "(":
            return self._call(value)
        if value in _CONSTANTS:
            return ("number", _CONSTANTS[value])
        if value not in self.variables:
            raise ConfigError(f"{self.where}: {value!r} is not one of the variables "
                              f"({', '.join(sorted(self.variables)) or 'none'})")
        self.used.add(value)
        return ("variable", value)

    def _call(self, name: str) -> tuple:
        if name not in _UNARY and name not in _VARIADIC and name != "roundp":
            raise ConfigError(f"{self.where}: unknown function {name!r} (known: "
                              f"{', '.join(sorted([*_UNARY, *_VARIADIC, 'roundp']))})")
        self._take("(")
        arguments = [self.expression()]
        while self._peek() == ",":
            self._take(",")
            arguments.append(self.expression())
        self._take(")")
        expected = 1 if name in _UNARY else 2 if name == "roundp" else None
        if expected is not None and len(arguments) != expected:
            raise ConfigError(f"{self.where}: {name}() takes {expected} argument(s), got "
                              f"{len(arguments)}")
        return ("call", name, arguments)


def _evaluate(node: tuple, columns: dict[str, np.ndarray]):
    kind = node[0]
    if kind == "number":
        return node[1]
    if kind == "variable":
        return columns[node[1]]
    if kind == "unary":
        value = np.asarray(_evaluate(node[2], columns), np.float64)
        return -value if node[1] == "-" else value if node[1] == "+" else (value == 0) * 1.0
    if kind == "binary":
        left = np.asarray(_evaluate(node[2], columns), np.float64)
        right = np.asarray(_evaluate(node[3], columns), np.float64)
        return np.asarray(_BINARY[node[1]](left, right), np.float64)
    if kind == "if":
        condition = np.asarray(_evaluate(node[1], columns), np.float64)
        return np.where(condition != 0, _evaluate(node[2], columns), _evaluate(node[3], columns))
    name, arguments = node[1], [np.asarray(_evaluate(a, columns), np.float64) for a in node[2]]
    if name in _UNARY:
        return _UNARY[name](arguments[0])
    if name == "roundp":
        scale = 10.0 ** arguments[1]
        return _UNARY["round"](arguments[0] * scale) / scale
    return _VARIADIC[name](np.broadcast_arrays(*arguments))
