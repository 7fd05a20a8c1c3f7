"""docs/api/events.md documents every event model: a section per type, a table row per field, an
example frame of that type with exactly the model's fields."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from graphrag.events import GRAPH_EVENT_TYPES, PAYLOAD_MODELS

DOC = Path(__file__).parent.parent / "docs" / "api" / "events.md"


def sections() -> dict[str, str]:
    text = DOC.read_text()
    parts = re.split(r"^### `([a-z_]+)`\s*$", text, flags=re.MULTILINE)
    # A section ends at the next heading of any level.
    return {name: re.split(r"^#{1,3} ", body, flags=re.MULTILINE)[0] for name, body in zip(parts[1::2], parts[2::2])}


@pytest.mark.parametrize("event_type", list(PAYLOAD_MODELS))
def test_every_event_model_is_documented_with_all_its_fields(event_type: str) -> None:
    documented = sections()
    assert event_type in documented, f"docs/api/events.md has no section ### `{event_type}`"
    section = documented[event_type]
    rows = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.MULTILINE))
    assert rows == set(PAYLOAD_MODELS[event_type].model_fields), f"{event_type}: table rows {sorted(rows)}"

    frame = re.search(r"```text\n(.*?)```", section, flags=re.DOTALL)
    assert frame, f"{event_type}: no example frame"
    lines = frame.group(1).strip().splitlines()
    assert f"event: {event_type}" in lines
    assert any(line.startswith("id: ") for line in lines) == (event_type in GRAPH_EVENT_TYPES)
    data = json.loads(next(line for line in lines if line.startswith("data: "))[len("data: ") :])
    PAYLOAD_MODELS[event_type].model_validate(data)
    assert list(data)[-1] == "timestamp" and set(data) == set(PAYLOAD_MODELS[event_type].model_fields)


def test_no_section_for_an_event_type_that_does_not_exist() -> None:
    assert set(sections()) <= set(PAYLOAD_MODELS)
