"""Example MCP server: arithmetic, statistics and unit conversion."""

from __future__ import annotations

import statistics as stats

from pydantic import BaseModel, Field

from _serve import serve
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("math", instructions="Arithmetic, descriptive statistics and unit conversion.", log_level="WARNING")

# Factors to a base unit per dimension; temperatures are handled apart.
UNITS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001), "cm": ("length", 0.01), "m": ("length", 1.0), "km": ("length", 1000.0),
    "in": ("length", 0.0254), "ft": ("length", 0.3048), "mi": ("length", 1609.344),
    "g": ("mass", 0.001), "kg": ("mass", 1.0), "lb": ("mass", 0.45359237), "oz": ("mass", 0.028349523125),
    "ml": ("volume", 0.001), "l": ("volume", 1.0), "gal": ("volume", 3.785411784),
    "s": ("time", 1.0), "min": ("time", 60.0), "h": ("time", 3600.0), "day": ("time", 86400.0),
}
TEMPERATURES = {"c", "f", "k"}


class Value(BaseModel):
    value: float


class Statistics(BaseModel):
    count: int
    mean: float
    median: float
    stdev: float
    min: float
    max: float


class Conversion(BaseModel):
    value: float
    unit: str


@server.tool()
def add(a: float, b: float) -> Value:
    """a + b"""
    return Value(value=a + b)


@server.tool()
def multiply(a: float, b: float) -> Value:
    """a × b"""
    return Value(value=a * b)


@server.tool()
def percent_change(old: float, new: float) -> Value:
    """(new − old) / old, in percent."""
    if old == 0:
        raise ToolError("old must not be 0")
    return Value(value=round((new - old) / old * 100, 6))


@server.tool()
def statistics(numbers: list[float] = Field(min_length=1)) -> Statistics:
    """Count, mean, median, standard deviation, min and max of a list of numbers."""
    return Statistics(
        count=len(numbers),
        mean=stats.fmean(numbers),
        median=stats.median(numbers),
        stdev=stats.stdev(numbers) if len(numbers) > 1 else 0.0,
        min=min(numbers),
        max=max(numbers),
    )


def _to_kelvin(value: float, unit: str) -> float:
    return {"k": value, "c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"k": value, "c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32}[unit]


@server.tool()
def convert_units(value: float, from_unit: str, to_unit: str) -> Conversion:
    """Convert between units of length, mass, volume, time or temperature (c, f, k)."""
    src, dst = from_unit.lower(), to_unit.lower()
    if src in TEMPERATURES and dst in TEMPERATURES:
        return Conversion(value=round(_from_kelvin(_to_kelvin(value, src), dst), 6), unit=dst)
    if src not in UNITS or dst not in UNITS:
        unknown = src if src not in UNITS else dst
        raise ToolError(f"unknown unit {unknown!r}; known: {', '.join(sorted([*UNITS, *TEMPERATURES]))}")
    (dim_a, fa), (dim_b, fb) = UNITS[src], UNITS[dst]
    if dim_a != dim_b:
        raise ToolError(f"cannot convert {dim_a} ({src}) to {dim_b} ({dst})")
    return Conversion(value=round(value * fa / fb, 9), unit=dst)


if __name__ == "__main__":
    serve(server)
