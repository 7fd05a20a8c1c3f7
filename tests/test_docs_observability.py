"""docs/api/operations.md "Observability" matches the code: every metric a running gateway exposes
is in its table with its type and labels (and nothing else is), the log format and the tracing
variables it names are the ones the code reads."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway_support import ROOT, run_gateway
from pml_gateway.observability.tracing import ENDPOINT_VARIABLES
from pml_gateway.settings import Settings

pytestmark = pytest.mark.anyio

DOC = ROOT / "docs" / "api" / "operations.md"


def observability_section() -> str:
    text = DOC.read_text()
    start = text.index("## Observability")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def documented_metrics() -> dict[str, tuple[str, set[str]]]:
    rows = re.findall(r"^\| `(pml_[a-z_]+)` \| (\w+) \|([^|]*)\|", observability_section(), flags=re.MULTILINE)
    return {name: (kind, set(re.findall(r"`([a-z_]+)`", labels))) for name, kind, labels in rows}


async def test_every_exposed_metric_is_documented(tmp_path: Path) -> None:
    async with run_gateway(tmp_path, {}) as gw:
        gw.gateway.instrumentation.observe_server("tools/call", "x", "", 0.001)  # histograms show their labels once used
        gw.gateway.instrumentation.observe_client("s", "s__x", "", 0.001)
        async with httpx.AsyncClient() as http:
            scrape = (await http.get(f"{gw.url}/metrics")).text
    exposed: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(scrape):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels if label != "le"}
        exposed[name] = (family.type, labels)
    documented = documented_metrics()
    # Labelled gauges and counters with no series yet (no downstreams) show no labels: compare names
    # and types for all, labels where the scrape shows them.
    assert set(documented) == set(exposed)
    for name, (kind, labels) in exposed.items():
        assert documented[name][0] == kind, name
        if labels:
            assert documented[name][1] == labels, name


def test_log_format_and_tracing_variables_are_the_ones_the_code_reads() -> None:
    section = observability_section()
    assert "--log-format json" in section and "PML_LOG_FORMAT=json" in section
    assert set(Settings.model_fields["log_format"].annotation.__args__) == {"text", "json"}
    for variable in ENDPOINT_VARIABLES:
        assert f"`{variable}`" in section
    example = re.search(r"```json\n(.*?)```", section, flags=re.DOTALL).group(1)
    import json

    record = json.loads(example)
    assert list(record)[:4] == ["time", "level", "logger", "message"]
