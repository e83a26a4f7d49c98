"""scripts/results_keys.py: a results page keeps the values of sections whose run directories
are absent, and recovers them from a page rendered before keys.json existed."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from intervals import study_time_rows  # noqa: E402
from results_keys import brace_pieces, carry_over, format_pieces, recover  # noqa: E402

TEMPLATE = "# Report\n\nold: {old_table}\n\nnew: {new_value} and again {new_value}.\n"


def test_recover_inverts_a_render_in_both_template_styles() -> None:
    values = {"old_table": "| a |\n|---|\n| 1 {x} |", "new_value": "0.25"}
    rendered = TEMPLATE.format_map(values)
    assert recover(brace_pieces(TEMPLATE), rendered) == values
    assert recover(format_pieces(TEMPLATE), rendered) == values
    assert recover(brace_pieces(TEMPLATE), rendered.replace("old:", "OLD:")) is None
    # one key rendered two different ways is not a render of this template
    assert recover(brace_pieces(TEMPLATE), rendered.replace("again 0.25", "again 0.5")) is None


def test_carry_over_keeps_absent_sections_and_replaces_computed_ones(tmp_path: Path) -> None:
    page, store = tmp_path / "page.md", tmp_path / "keys.json"
    page.write_text(TEMPLATE.format(old_table="T-from-session-1", new_value="0.1"))
    merged, carried = carry_over({"new_value": "0.9"}, TEMPLATE, brace_pieces, store, page)
    assert merged == {"old_table": "T-from-session-1", "new_value": "0.9"}
    assert carried == ["old_table"]
    assert json.loads(store.read_text()) == merged
    # the next render reads the store, not the page; a computed value always wins
    page.write_text("something else entirely")
    merged, carried = carry_over({"old_table": "T-new"}, TEMPLATE, brace_pieces, store, page)
    assert merged == {"old_table": "T-new", "new_value": "0.9"} and carried == ["new_value"]


def test_study_time_rows_reads_study_json_and_usr_bin_time(tmp_path: Path) -> None:
    study = tmp_path / "paper9-design-x"
    study.mkdir()
    points = [{"state": "completed", "seconds": 90.0}, {"state": "failed", "seconds": 30.0}]
    (study / "study.json").write_text(json.dumps({"points": points}))
    (tmp_path / "paper9-design-x.time").write_text(
        "\tUser time (seconds): 100.5\n\tSystem time (seconds): 19.5\n"
        "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n"
    )
    rows = study_time_rows(tmp_path, ["paper9-design-x", "paper9-absent"])
    assert rows == [
        {
            "study": "`experiments/paper9-design-x.toml`",
            "points completed": "1 of 2",
            "points (min)": "2.0",
            "wall (min)": "62.0",
            "CPU (min)": "2.0",
        }
    ]
