"""docs/api/mcp-tools.md against the code: every pml_* tool, every field of its output, lean exposure."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from graphrag.grading import GradingStats, RankingStats
from pml_gateway.proxy.tools import SPECS, NextToolSuggestion, ToolMatch

DOC = (Path(__file__).resolve().parents[1] / "docs" / "api" / "mcp-tools.md").read_text()


def section(title: str) -> str:
    match = re.search(rf"^### `{re.escape(title)}`\n(.*?)(?=^##)", DOC, re.M | re.S)
    assert match, f"no section for {title}"
    return match.group(1)


@pytest.mark.parametrize("name", [spec.name for spec in SPECS])
def test_every_gateway_tool_has_a_section_naming_its_inputs_and_outputs(name: str) -> None:
    spec = next(s for s in SPECS if s.name == name)
    text = section(name)
    models: list[type[BaseModel]] = [spec.input_model]
    if spec.output_model is not None:
        models.append(spec.output_model)
    for model in models:
        for field in model.model_fields:
            assert f'"{field}"' in text or f"`{field}`" in text, f"{name}: {model.__name__}.{field} undocumented"


@pytest.mark.parametrize("model", [ToolMatch, NextToolSuggestion, GradingStats, RankingStats])
def test_nested_output_fields_are_documented(model: type[BaseModel]) -> None:
    for field in model.model_fields:
        assert f'"{field}"' in DOC, f"{model.__name__}.{field} undocumented"


def test_lean_exposure_is_documented_with_its_setting() -> None:
    text = DOC.split("### Lean exposure", 1)[1].split("###", 1)[0]
    for needle in ("tool_exposure=lean", "PML_TOOL_EXPOSURE", "--tool-exposure", "pml_call_tool", "pml_search_tools"):
        assert needle in text, needle
