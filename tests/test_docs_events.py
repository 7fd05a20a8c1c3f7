"""docs/api/events.md documents every event model: a section per type, a table row per field, an
example frame of that type with exactly the model's fields; every query parameter has a row; and
every example parses (curl requests and their errors against the code, WebSocket messages against
the models, Python and JavaScript as code)."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from starlette.datastructures import QueryParams

from graphrag.events import GRAPH_EVENT_TYPES, LIVE_EVENT_TYPES, PAYLOAD_MODELS
from pml_gateway.events.filters import QUERY_PARAMETERS, StreamRequestError, parse_query

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


# -- examples: every one parses, and says what the code does ----------------------------------
def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.DOTALL)


def test_every_query_parameter_has_a_row() -> None:
    rows = set(re.findall(r"^\| `([a-z_]+)` \| `\?", DOC.read_text(), flags=re.MULTILINE))
    assert rows == set(QUERY_PARAMETERS)


def test_curl_examples_are_valid_requests_and_errors_are_what_the_code_says() -> None:
    """Each curl URL parses as a stream request; a JSON line after one is exactly its 400 body."""
    for block in blocks("console"):
        lines = block.splitlines()
        for index, line in enumerate(lines):
            found = re.search(r"curl [^']*'?(http://127\.0\.0\.1:8000/events/stream[^' ]*)", line)
            if not found:
                continue
            url = urlsplit(found.group(1))
            following = lines[index + 1] if index + 1 < len(lines) else ""
            if following.startswith('{"error"'):
                with pytest.raises(StreamRequestError) as refused:
                    parse_query(QueryParams(url.query), None)
                assert json.loads(following) == refused.value.body, line
            else:
                parse_query(QueryParams(url.query), None)  # raises if the documented request is refused


def test_websocket_messages_match_the_payload_models() -> None:
    messages = [json.loads(block) for block in blocks("json")]
    assert messages, "no WebSocket message example"
    for message in messages:
        assert list(message) == ["id", "type", "data"]
        model = PAYLOAD_MODELS[message["type"]]
        model.model_validate(message["data"])
        assert (message["id"] is not None) == model.has_id


def test_python_examples_compile_and_js_examples_parse() -> None:
    for block in blocks("python"):
        ast.parse(block)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the JavaScript examples were not checked")
    for block in blocks("js"):
        # As an ES module: the examples use top-level await, as a page's module script may.
        checked = subprocess.run([node, "--input-type=module", "--check"], input=block, text=True, capture_output=True)
        assert checked.returncode == 0, checked.stderr


def test_every_new_filter_and_type_is_shown_in_an_example() -> None:
    text = DOC.read_text()
    for parameter in ("tools=", "servers=", "workflow_id="):
        assert parameter in "".join(blocks("console")), parameter
    for event_type in LIVE_EVENT_TYPES | {"tool_added", "tool_removed"}:
        assert f'"{event_type}"' in "".join(blocks("js")) + "".join(blocks("python")) + "".join(blocks("json")) or (
            f"types={event_type}" in text
        ), event_type
