"""The public API as a type checker sees it: a deferred call is typed as returning Result[R]."""

from __future__ import annotations

import textwrap
from pathlib import Path

from mypy import api

SNIPPET = """
from reqcron import Result, delay

@delay
def add(a: int, b: int) -> int:
    return a + b

@delay(minutes=5, retries=2)
def greet(name: str) -> str:
    return name

reveal_type(add(1, 2))
reveal_type(greet("x").wait(1).result)
add("one", 2)
"""


def test_a_deferred_call_is_typed_by_its_function(tmp_path: Path):
    source = tmp_path / "snippet.py"
    source.write_text(textwrap.dedent(SNIPPET))
    out, _, _ = api.run(["--strict", "--no-incremental", "--cache-dir", str(tmp_path / "c"),
                         str(source)])
    assert 'Revealed type is "reqcron.calls.result.Result[int]"' in out, out
    assert 'Revealed type is "str | None"' in out, out
    assert 'incompatible type "str"; expected "int"' in out, out
    assert out.count("error:") == 1, out  # nothing else in reqcron's API trips --strict
