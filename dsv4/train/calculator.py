"""The calculator tool of the synthetic tasks: a safe arithmetic evaluator and its OpenAI `tools` schema.

Expressions are parsed with `ast` and walked node by node; nothing is ever passed to `eval`.
Allowed: int/float literals, + - * / // % **, unary + -, parentheses. Sizes are bounded so no input
can make the evaluator slow: the text length, every intermediate magnitude and every exponent.
"""
import ast
import math
import operator

MAX_CHARS = 200
MAX_EXPONENT = 100
MAX_MAGNITUDE = 1e50

CALCULATOR_TOOL = {
    "type": "function",
    "function": {
        "name": "calculator",
        "description": "Evaluate an arithmetic expression with + - * / // % ** and parentheses.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "For example: (12 + 7) * 3 - 5"}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    },
}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


class CalculatorError(ValueError):
    """An expression the calculator refuses or cannot evaluate."""


def calculate(expression: str) -> int | float:
    """Value of an arithmetic expression, e.g. calculate("(12 + 7) * 3 - 5") == 52."""
    if not isinstance(expression, str):
        raise CalculatorError(f"expression must be a string, found {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression has {len(expression)} characters; the limit is {MAX_CHARS}")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as e:
        raise CalculatorError(f"not an arithmetic expression: {expression!r} ({e.msg})") from None
    return _eval(tree.body, expression)


def _eval(node: ast.AST, expression: str) -> int | float:
    """Evaluate one allowed node, checking the size of its value."""
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _checked(node.value, expression)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand, expression))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, expression), _eval(node.right, expression)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise CalculatorError(f"exponent {right} in {expression!r} exceeds the limit {MAX_EXPONENT}")
        try:
            value = _BINARY[type(node.op)](left, right)
        except ZeroDivisionError:
            raise CalculatorError(f"division by zero in {expression!r}") from None
        except OverflowError:
            raise CalculatorError(f"result of {expression!r} is too large") from None
        return _checked(value, expression)
    what = type(node.op if isinstance(node, (ast.BinOp, ast.UnaryOp)) else node).__name__
    raise CalculatorError(f"unsupported {what} at column {getattr(node, 'col_offset', 0) + 1} of {expression!r}: "
                          "only numbers, + - * / // % ** and parentheses are allowed")


def _checked(value: object, expression: str) -> int | float:
    """value if it is a finite real number within MAX_MAGNITUDE."""
    if not isinstance(value, (int, float)):
        raise CalculatorError(f"{expression!r} has no real value (got {type(value).__name__})")
    if (isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_MAGNITUDE:
        raise CalculatorError(f"a value in {expression!r} exceeds the magnitude limit {MAX_MAGNITUDE:g}")
    return value


def format_number(value: int | float) -> str:
    """Canonical text of a result: integers (and integral floats) without a decimal point, else <= 10 decimals."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(round(value, 10)) if isinstance(value, float) else str(value)
