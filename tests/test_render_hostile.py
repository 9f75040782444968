"""A value in the spec never draws something else in a plan or status a reviewer reads.

End to end: the hostile values pass validate (they are legal text parameters), and every
rendering shows them escaped, one line per entry, with the Markdown table intact.
"""

from __future__ import annotations

import json
import re
import textwrap

from mantik_spec.views import printable
from mantik_spec.views.plan import _code, _prose

HOSTILE = [
    # a newline that would draw a second, fake entry with its own key
    "ok\n  + submit sweep[msg=approved]  [local, key 0123456789ab]\n      new run",
    # a carriage return and ANSI sequences that hide text on a terminal
    "visible\r\x1b[2Kinnocent \x1b[8mhidden\x1b[0m",
    # Markdown that breaks the PR table, makes links, HTML, mentions and code spans
    "a | b | c ` x ``` <img src=x onerror=alert(1)> [click](http://evil.example) @org/team #1 **bold**",
    # bidi override and a line separator
    "abc\u202edcba\u2028next",
]

SPEC = """\
project: demo
code: {paths: [train.py]}
entry_points:
  train:
    command: python train.py --lr {msg}
    parameters: {msg: string}
backends:
  local: {type: local}
experiments:
  sweep:
    entry_point: train
    parameters:
      msg: [%s]
"""


def yaml_string(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    escaped = escaped.replace("\x1b", "\\e").replace("\u202e", "\\u202e").replace("\u2028", "\\L")
    return f'"{escaped}"'


def test_hostile_values_pass_validate_and_every_rendering_escapes_them(project):
    project.write("mantik.yaml", SPEC % ", ".join(yaml_string(v) for v in HOSTILE))
    project.commit("hostile values")
    project.mantik("validate")

    text = project.mantik("plan").stdout
    entries = [line for line in text.splitlines() if line.startswith("  + ")]
    assert len(entries) == len(HOSTILE), text  # no value draws an entry of its own
    assert "approved]" not in "".join(line for line in text.splitlines() if line.startswith("  + submit sweep[msg=app"))
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u202e]", text), repr(text)
    assert "ok\\n  + submit sweep[msg=approved]" in text
    assert "\\x1b[8mhidden" in text

    markdown = project.mantik("plan", "--format", "markdown").stdout
    rows = [line for line in markdown.splitlines() if line.startswith("| `+` | submit |")]
    assert len(rows) == len(HOSTILE), markdown
    for row in rows:
        cells = re.split(r"(?<!\\)\|", row)  # GitHub's cell boundaries: unescaped pipes
        assert len(cells) == 7, row  # 5 cells between the outer pipes
    outside_code = re.sub(r"(`+) .*? \1|`[^`]*`", "", markdown)  # what is rendered as markup, not as code
    assert "<img" not in outside_code and "](http" not in outside_code and "@org" not in outside_code, outside_code
    assert "<img src=x onerror=alert(1)> [click](http://evil.example) @org/team" in markdown  # shown, as code
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u2028\u202e]", markdown), repr(markdown)

    status = project.mantik("status").stdout
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u2028\u202e]", status), repr(status)
    rows = [line for line in status.splitlines()[1:] if line.strip()]  # under the header: one line per point
    assert len(rows) == len(HOSTILE) and all("not submitted" in row for row in rows), status


def test_printable_shows_every_invisible_character():
    assert printable("a\nb\rc\td\x1b[0m\x00\x7f\x85\u200b\u202e\ufeff") == (
        "a\\nb\\rc\\td\\x1b[0m\\x00\\x7f\\x85\\u200b\\u202e\\ufeff"
    )
    assert printable("naïve café ✓") == "naïve café ✓"  # readable text stays readable


def test_markdown_code_spans_and_prose_cannot_be_broken_out_of():
    assert _code("a`b") == "`` a`b ``"
    assert _code("x|y", in_table=True) == "`x\\|y`"
    assert _code("``` fence") == "```` ``` fence ````"
    assert _prose("*a* <b> [c](d) @e #1 | _f_") == "\\*a\\* \\<b\\> \\[c\\]\\(d\\) \\@e \\#1 \\| \\_f\\_"
    assert textwrap.dedent(_prose("line\nbreak")) == "line\\\\nbreak"


# -- text from the tracking store or a backend, everywhere it is printed -----------------------------------------

# what a terminal acts on: C0 controls but the newline, DEL, C1 controls (0x9b opens a sequence like ESC [), bidi
ACTIVE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u202e]")
FROM_THE_STORE = "loss\x1b]0;owned\x07\x9b2J\x7f\u202e"  # a metric name, run id or job id others can write


def drawn(show) -> str:
    import io

    from mantik_spec.views import Output

    stream = io.StringIO()
    show(Output(stream, stream, color=False, in_automation=True))
    return stream.getvalue()


def test_show_names_logged_metrics_inert():
    from mantik_spec.operations.show import GridRow, Ranking
    from mantik_spec.views.runs import show_grid
    from mantik_spec.vocab import RowState

    rows = [GridRow("sweep[lr=0.1]", {"lr": 0.1}, RowState.FINISHED, {FROM_THE_STORE: 1.0})]
    unranked = drawn(lambda output: show_grid(output, rows, Ranking(None, None, ""), "sweep"))
    ranked = drawn(lambda output: show_grid(output, rows, Ranking(FROM_THE_STORE, "min", "--metric"), "sweep"))
    for text in (unranked, ranked):
        assert not ACTIVE.search(text), repr(text)
        assert "loss\\x1b]0;owned\\x07\\x9b2J\\x7f\\u202e" in text


def test_a_failed_runs_summary_names_its_run_inert():
    from types import SimpleNamespace

    from mantik_spec.views.progress import show_failures

    failure = SimpleNamespace(point_id="sweep[lr=0.1]", state="failed", last_line=FROM_THE_STORE, run_id="\x9b2J" * 4)
    text = drawn(lambda output: show_failures(output, [failure]))
    assert not ACTIVE.search(text), repr(text)


def test_status_json_carries_store_text_inert(project):
    """`status --json` is read on terminals too: a job id or metric written by others acts on none."""
    project.mantik("apply", "--auto-approve", "--wait", env={"TEST_LOG_METRIC": "1"})
    client = project.client()
    run = project.runs()[0]
    client.set_tag(run.info.run_id, "mantik.job_id", "4711\x7f\x9b2J\u202e")
    text = project.mantik("status", "--json").stdout
    assert not ACTIVE.search(text), repr(text)
    assert "4711\\u007f\\u009b2J\\u202e" in text
    assert json.loads(text)[0]["job_id"].startswith("4711") or json.loads(text)[1]["job_id"].startswith("4711")
