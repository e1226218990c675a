"""Tools: schemas from signatures, calls parsed and checked, run concurrently with limits, and
the sandboxed Python tool against hostile programs sent as tool calls."""

import json
import socket
import subprocess
import sys
import time

import pytest

from rljax import envs
from rljax.envs.tools import Tool, as_tools, cut_middle, parse_calls, run_calls


def scale(x: float, factor: int = 2) -> str:
    """Multiplies a number.

    Args:
      x: the number.
      factor: by how much.
    """
    return str(x * factor)


def call(name: str, **arguments) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def test_a_function_becomes_a_json_schema():
    schema = Tool.from_function(scale).schema["function"]
    assert schema["name"] == "scale" and schema["description"] == "Multiplies a number."
    assert schema["parameters"] == {"type": "object", "required": ["x"], "properties": {
        "x": {"type": "number", "description": "the number."},
        "factor": {"type": "integer", "description": "by how much."}}}

    def untyped(x):
        """No types."""

    with pytest.raises(ValueError, match="needs a type"):
        Tool.from_function(untyped)
    with pytest.raises(ValueError, match="two tools are named"):
        as_tools([scale, scale])


def test_bad_calls_come_back_as_tool_text():
    tools = as_tools([scale])
    calls = parse_calls(call("scale", x=3) + "<tool_call>{not json}</tool_call>" + call("nope") + call("scale", y=1)
                        + call("scale", x="three") + call("scale", x=1, factor=0.5))
    outputs, _ = run_calls(tools, calls)
    assert outputs[0] == "6.0"
    assert outputs[1].startswith("error: the tool call is not JSON")
    assert "unknown tool 'nope'" in outputs[2]
    assert "unknown ['y']" in outputs[3] and "missing ['x']" in outputs[3]
    assert "must be number" in outputs[4] and "must be integer" in outputs[5]


def test_calls_run_concurrently_with_a_timeout_and_an_output_cap():
    def nap(seconds: float) -> str:
        """Sleeps.

        Args:
          seconds: how long.
        """
        time.sleep(seconds)
        return "rested"

    def flood() -> str:
        """Prints a lot."""
        return "head" + "y" * 100_000 + "tail"

    tools = as_tools([nap, flood])
    t0 = time.perf_counter()
    outputs, seconds = run_calls(tools, [{"name": "nap", "arguments": {"seconds": 0.4}}] * 4
                                 + [{"name": "nap", "arguments": {"seconds": 5}}, {"name": "flood"}],
                                 timeout_s=1.0, max_output_chars=100)
    assert time.perf_counter() - t0 < 1.8 and seconds < 1.8  # four 0.4 s naps at once, one cut at 1 s
    assert outputs[:4] == ["rested"] * 4 and "timed out after 1 s" in outputs[4]
    assert outputs[5].startswith("head") and outputs[5].endswith("tail") and len(outputs[5]) < 160
    assert cut_middle("abcdef", 6) == "abcdef" and "[... 2 characters cut ...]" in cut_middle("abcdef", 4)


def test_the_calculator_is_exact_and_refuses_what_is_not_arithmetic():
    assert envs.calculator("347 * 28") == "9716"
    assert envs.calculator("2 ** 64 + (7 - 10) // 2") == str(2 ** 64 - 2)
    assert envs.calculator("1 / 4") == "0.25" and envs.calculator("0.1 + 0.2") == "0.3"
    outputs, _ = run_calls(as_tools([envs.calculator]), [
        {"name": "calculator", "arguments": {"expression": e}}
        for e in ("__import__('os').system('true')", "9 ** 9 ** 9", "1 / 0", "x + 1")])
    assert all(o.startswith("error:") for o in outputs), outputs


def test_tool_env_answers_calls_and_scores_the_final_reply():
    env = envs.ToolEnv(envs.Task("What is 347 * 28?", score=lambda r: float("9716" in r)), [envs.calculator],
                       max_turns=3)
    opening = env.reset()
    assert opening[0]["role"] == "system" and '"name": "calculator"' in opening[0]["content"]
    step = env.step(call("calculator", expression="347 * 28"))
    assert not step.done and step.messages == [{"role": "tool", "content": "9716"}] and step.info["tool_calls"] == 1
    final = env.step("The answer is 9716.")
    assert final.done and final.reward == 1.0
    env.reset()
    env.step(call("calculator", expression="1 + 1"))
    env.step(call("calculator", expression="1 + 1"))
    last = env.step(call("calculator", expression="1 + 1"))
    assert last.done and last.reward == 0.0 and last.info["out_of_turns"]


HOSTILE = {  # program -> what it tries
    "while True:\n    pass": "spin forever",
    "import time\ntime.sleep(1000)": "sleep forever",
    "x = bytearray(8 * 2 ** 30)": "allocate 8 GiB",
    "chunks = []\nwhile True:\n    chunks.append(bytearray(10 ** 7))": "grow without end",
    "import os\nwhile True:\n    os.fork()": "fork bomb",
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass": "stubborn fork bomb",
    "while True:\n    print('x' * 10000)": "flood stdout",
    "import sys\nwhile True:\n    sys.stderr.write('y' * 10000)": "flood stderr",
    "open('/tmp/big', 'wb').write(b'x' * (64 << 20))": "fill the disk",
    "import os\nos._exit(0)": "exit without reporting",
}


@pytest.mark.sandbox
def test_hostile_programs_sent_as_tool_calls_are_contained(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("hunter2")
    escaped = tmp_path / "escaped.txt"
    sentinel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        programs = dict(HOSTILE)
        programs[f"print(open({str(secret)!r}).read())"] = "read a host file"
        programs[f"open({str(escaped)!r}, 'w').write('x')\nprint('wrote')"] = "write a host file"
        programs[f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\nprint('connected')"
                 ] = "reach a host socket"
        programs[f"import os, signal\nos.kill({sentinel.pid}, signal.SIGKILL)\nprint('killed')"] = "kill a host process"
        assert len(programs) == 14
        env = envs.ToolEnv(envs.Task("?", score=lambda r: 0.0), [envs.python], max_turns=2, timeout_s=20.0)
        env.reset()
        t0 = time.perf_counter()
        step = env.step("".join(call("python", code=p) for p in programs))
        elapsed = time.perf_counter() - t0
        try:
            listener.settimeout(0.2)
            with pytest.raises(TimeoutError):
                listener.accept()
        finally:
            alive = sentinel.poll() is None
            sentinel.kill()
            sentinel.wait()
    assert elapsed < 20 and len(step.messages) == len(programs)
    for message, what in zip(step.messages, programs.values()):
        text = message["content"]
        assert "hunter2" not in text and not text.endswith(("wrote", "connected", "killed")), (what, text)
        assert "[" in text and "passed" not in text.splitlines()[-1], (what, text)  # a sandbox status, not a success
    assert alive and not escaped.exists()


@pytest.mark.sandbox
def test_the_python_tool_returns_what_the_program_prints():
    assert envs.python("print(347 * 28)") == "9716"
    assert "ZeroDivisionError" in envs.python("1 / 0")
    assert envs.python("x = 1") == "[no output]"
