"""Tools a policy can call: Python functions described by JSON schema, run with limits.

    def calculator(expression: str) -> str:
        \"\"\"Evaluates an arithmetic expression.

        Args:
          expression: e.g. "347 * 28".
        \"\"\"
    tool = Tool.from_function(calculator)
    tool.schema   # {"type": "function", "function": {"name", "description", "parameters"}}

The model is told the tools' schemas (`describe`) and calls them in the Hermes format that
Qwen2.5 and many tool-tuned chat models use:

    <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 28"}}</tool_call>

`run_calls` runs a reply's calls concurrently, each with a timeout; whatever happens (bad JSON,
an unknown tool, wrong arguments, an exception, a timeout, a flood of output) comes back as the
tool's text, so the policy sees it and nothing else breaks. Outputs longer than the cap are cut
in the middle, marked, keeping their start and end.

Ready tools: `calculator` (exact integer and decimal arithmetic, parsed, never `eval`ed) and
`python` (code run in the bubblewrap sandbox of `rljax.rewards.sandbox`, which blocks the
network, the host's files and processes).
"""

from __future__ import annotations

import ast
import concurrent.futures
import dataclasses
import inspect
import json
import operator
import re
import time
import typing
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from rljax.rewards.sandbox import run_code

_JSON_TYPES = {str: "string", int: "integer", float: "number", bool: "boolean"}
_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class Tool:
    """A callable tool: `fn(**arguments) -> str`, with its name, description and argument types."""

    name: str
    description: str
    parameters: dict[str, tuple[type, str]]  # argument -> (type, description)
    required: tuple[str, ...]
    fn: Callable[..., Any]

    @classmethod
    def from_function(cls, fn: Callable) -> "Tool":
        """A tool from a function with a docstring and typed arguments (str, int, float, bool);
        its description is the docstring's first paragraph, each argument's the line under
        "Args:"."""
        doc = inspect.getdoc(fn)
        if not doc:
            raise ValueError(f"tool {fn.__name__} needs a docstring: it is the model's description of the tool")
        hints = typing.get_type_hints(fn)
        arg_docs = dict(re.findall(r"^\s*(\w+):\s*(.+)$", doc.split("Args:", 1)[1], re.MULTILINE)
                        ) if "Args:" in doc else {}
        parameters, required = {}, []
        for name, p in inspect.signature(fn).parameters.items():
            if hints.get(name) not in _JSON_TYPES:
                raise ValueError(f"tool {fn.__name__}: argument {name!r} needs a type among str, int, float, bool")
            parameters[name] = (hints[name], arg_docs.get(name, ""))
            if p.default is inspect.Parameter.empty:
                required.append(name)
        return cls(fn.__name__, doc.split("\n\n", 1)[0].replace("\n", " "), parameters, tuple(required), fn)

    @property
    def schema(self) -> dict:
        """The tool as an OpenAI-style JSON schema, as chat templates take `tools`."""
        properties = {name: {"type": _JSON_TYPES[t], **({"description": d} if d else {})}
                      for name, (t, d) in self.parameters.items()}
        return {"type": "function", "function": {"name": self.name, "description": self.description, "parameters": {
            "type": "object", "properties": properties, "required": list(self.required)}}}

    def check_arguments(self, arguments: Any) -> dict:
        """The call's arguments, checked against the signature (ints are accepted as floats)."""
        if not isinstance(arguments, dict):
            raise ValueError(f"arguments must be a JSON object, got {type(arguments).__name__}")
        unknown = sorted(set(arguments) - set(self.parameters))
        missing = sorted(set(self.required) - set(arguments))
        if unknown or missing:
            raise ValueError(f"{self.name} takes {sorted(self.parameters)}" + (f"; unknown {unknown}" if unknown else "")
                             + (f"; missing {missing}" if missing else ""))
        for name, value in arguments.items():
            kind = self.parameters[name][0]
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                arguments = {**arguments, name: float(value)}
            elif not ok:
                raise ValueError(f"{self.name}: argument {name!r} must be {_JSON_TYPES[kind]}, got {value!r}")
        return arguments


def as_tools(tools: Sequence[Tool | Callable]) -> dict[str, Tool]:
    """Tools by name; plain functions become `Tool.from_function`."""
    out = {}
    for t in tools:
        t = t if isinstance(t, Tool) else Tool.from_function(t)
        if t.name in out:
            raise ValueError(f"two tools are named {t.name!r}")
        out[t.name] = t
    return out


def describe(tools: dict[str, Tool]) -> str:
    """The system-prompt text that tells a model its tools and how to call them."""
    schemas = "\n".join(json.dumps(t.schema) for t in tools.values())
    return ("You may call tools. Their signatures, as JSON schema:\n<tools>\n" + schemas + "\n</tools>\n"
            "To call one, reply with <tool_call>{\"name\": <tool name>, \"arguments\": <arguments object>}"
            "</tool_call>; its result comes back in a tool message. Without a call, your reply is the final answer.")


def parse_calls(reply: str) -> list[Any]:
    """The reply's tool calls, in order: each a dict (name, arguments) or, when its JSON does not
    parse, the error text."""
    calls = []
    for body in _CALL.findall(reply):
        try:
            calls.append(json.loads(body))
        except json.JSONDecodeError as error:
            calls.append(f"error: the tool call is not JSON ({error.msg} at character {error.pos})")
    return calls


def cut_middle(text: str, max_chars: int) -> str:
    """`text` within `max_chars`: its start and end kept, the middle replaced by a marker."""
    if len(text) <= max_chars:
        return text
    head, tail = max_chars // 2, max_chars - max_chars // 2
    return f"{text[:head]}\n[... {len(text) - head - tail} characters cut ...]\n{text[-tail:]}"


def _call_one(tools: dict[str, Tool], call: Any) -> str:
    if isinstance(call, str):
        return call
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return 'error: a tool call must be {"name": ..., "arguments": {...}}'
    tool = tools.get(call["name"])
    if tool is None:
        return f"error: unknown tool {call['name']!r}; the tools are {sorted(tools)}"
    try:
        return str(tool.fn(**tool.check_arguments(call.get("arguments", {}))))
    except Exception as error:  # noqa: BLE001 - a failing tool is an observation, not a crash
        return f"error: {type(error).__name__}: {error}"


# Shared by every ToolEnv: calls of all rows of a batch run at once. A call that times out keeps
# its thread until it returns (Python cannot stop a thread), so long-running tools should bound
# themselves, as `python` does through the sandbox's own timeout.
_POOL = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="rljax-tool")


def run_calls(tools: dict[str, Tool], calls: Sequence[Any], *, timeout_s: float = 5.0,
              max_output_chars: int = 2000) -> tuple[list[str], float]:
    """(each call's output text, the wall time): the calls run concurrently, each given
    `timeout_s`; outputs are capped at `max_output_chars` (`cut_middle`)."""
    t0 = time.perf_counter()
    futures = [_POOL.submit(_call_one, tools, call) for call in calls]
    outputs = []
    for future in futures:
        try:
            text = future.result(timeout=max(timeout_s - (time.perf_counter() - t0), 0.0))
        except concurrent.futures.TimeoutError:
            text = f"error: the tool call timed out after {timeout_s:g} s"
        outputs.append(cut_middle(text, max_output_chars))
    return outputs, time.perf_counter() - t0


# -- ready tools ----------------------------------------------------------------------------------
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_MAX_EXPONENT, _MAX_DIGITS = 64, 200


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return Fraction(str(node.value)) if isinstance(node.value, float) else Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (right.denominator != 1 or abs(right) > _MAX_EXPONENT):
            raise ValueError(f"exponents must be integers of at most {_MAX_EXPONENT}")
        if isinstance(node.op, (ast.Div, ast.FloorDiv, ast.Mod)) and right == 0:
            raise ZeroDivisionError("division by zero")
        value = Fraction(_BINARY[type(node.op)](left, right))
        if len(str(abs(value.numerator))) > _MAX_DIGITS:
            raise ValueError(f"the result has more than {_MAX_DIGITS} digits")
        return value
    raise ValueError(f"unsupported expression: {ast.dump(node)[:60]}; use numbers, + - * / // % ** and parentheses")


def calculator(expression: str) -> str:
    """Evaluates an arithmetic expression exactly and returns the result.

    Args:
      expression: numbers with + - * / // % ** and parentheses, e.g. "347 * 28".
    """
    value = _evaluate(ast.parse(expression.replace("^", "**"), mode="eval"))
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.12g}"


def python(code: str) -> str:
    """Runs Python code in a sandbox and returns what it prints (stdout, then stderr).

    Args:
      code: a Python program; print the values you want to see.
    """
    result = run_code(code, "", timeout_s=3.0, memory_mb=256, max_output_bytes=1 << 15)
    text = result.stdout + result.stderr
    if result.status != "passed":
        text += f"\n[{result.status}: {result.detail}]" if result.detail else f"\n[{result.status}]"
    return text.strip() or "[no output]"
