"""Example MCP server: notes kept as JSON files in a directory.

The directory is ``$NOTES_DIR``, or a fresh temporary one seeded with a few notes so that a demo
has something to search. Tools: create, list, search, read, append.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import shutil
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field

from _serve import serve
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("notes", instructions="Create, find and read short notes.", log_level="WARNING")

SEED = [
    ("Release checklist", "Run the test suite. Tag the release. Publish the wheel. Announce it on the mailing list.", ["work"]),
    ("Reading list", "Dune by Frank Herbert. The Left Hand of Darkness. Gödel, Escher, Bach.", ["books"]),
    ("Meeting notes", "We agreed to ship the gateway on Friday. Alice owns the dashboard. Bob reviews the SSE code.", ["work"]),
    ("Trip to Lisbon", "Flights booked for May. Visit Belém tower. Try pastel de nata. Budget is 800 euros.", ["travel"]),
]


def _directory() -> Path:
    configured = os.environ.get("NOTES_DIR")
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="pml-notes-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    for title, body, tags in SEED:
        _write(path, _new(title, body, tags))
    return path


class Note(BaseModel):
    id: str
    title: str
    body: str
    tags: list[str] = Field(default_factory=list)
    updated: str


class NoteRef(BaseModel):
    id: str
    title: str
    tags: list[str]


class NoteList(BaseModel):
    notes: list[NoteRef]


class Match(BaseModel):
    id: str
    title: str
    score: int = Field(description="How many query words the note contains.")
    snippet: str


class SearchResult(BaseModel):
    query: str
    matches: list[Match]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _new(title: str, body: str, tags: list[str]) -> Note:
    return Note(id=uuid.uuid4().hex[:8], title=title, body=body, tags=tags, updated=_now())


def _write(directory: Path, note: Note) -> None:
    (directory / f"{note.id}.json").write_text(note.model_dump_json(indent=1), encoding="utf-8")


def _all(directory: Path) -> list[Note]:
    notes = [Note.model_validate(json.loads(p.read_text(encoding="utf-8"))) for p in directory.glob("*.json")]
    return sorted(notes, key=lambda n: (n.updated, n.id))


def _load(note_id: str) -> Note:
    path = NOTES / f"{note_id}.json"
    if not re.fullmatch(r"[0-9a-f]{8}", note_id) or not path.exists():
        raise ToolError(f"no note with id {note_id!r}")
    return Note.model_validate(json.loads(path.read_text(encoding="utf-8")))


NOTES = _directory()


@server.tool()
def create_note(title: str, body: str, tags: list[str] | None = None) -> Note:
    """Create a note; returns it with its new id."""
    if not title.strip():
        raise ToolError("title must not be empty")
    note = _new(title.strip(), body, sorted(set(tags or [])))
    _write(NOTES, note)
    return note


@server.tool()
def list_notes(tag: str | None = None) -> NoteList:
    """List notes, optionally only those with a tag."""
    notes = [n for n in _all(NOTES) if tag is None or tag in n.tags]
    return NoteList(notes=[NoteRef(id=n.id, title=n.title, tags=n.tags) for n in notes])


@server.tool()
def search_notes(query: str, limit: int = Field(default=5, ge=1, le=50)) -> SearchResult:
    """Find notes containing the words of the query, best first."""
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 1]
    if not words:
        raise ToolError("query must contain at least one word")
    scored: list[Match] = []
    for note in _all(NOTES):
        text = f"{note.title} {note.body}".lower()
        score = sum(1 for w in words if w in text)
        if score:
            scored.append(Match(id=note.id, title=note.title, score=score, snippet=note.body[:80]))
    scored.sort(key=lambda m: (-m.score, m.title))
    return SearchResult(query=query, matches=scored[:limit])


@server.tool()
def read_note(note_id: str) -> Note:
    """Read one note by id."""
    return _load(note_id)


@server.tool()
def append_to_note(note_id: str, text: str) -> Note:
    """Append a paragraph to a note."""
    note = _load(note_id)
    note = note.model_copy(update={"body": f"{note.body}\n\n{text}", "updated": _now()})
    _write(NOTES, note)
    return note


if __name__ == "__main__":
    serve(server)
