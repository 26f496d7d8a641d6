"""Routes on a transit map (RewardMap's planning questions): fewest transfers, then fewest stops, deterministic.

Split from :mod:`vrl.data.transit` (the question generator and dataset builder), which asks for these routes.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Leg:
    """One section of a route: ride ``line`` from ``departure`` to ``arrival`` over ``stops`` stations."""

    line: str
    departure: str
    arrival: str
    stops: int


def plan_route(lines: dict[str, list[str]], start: str, goal: str) -> list[Leg]:
    """The route with the fewest transfers, then the fewest stops (Dijkstra on (station, line) states).

    Riding to an adjacent station costs (0 transfers, 1 stop); changing line at a station costs (1, 0).
    Ties between routes of equal cost go to the one whose step sequence, each step a (line position in
    ``lines``, station name) pair, sorts first; since no step is free, that order survives extension, so
    the first goal state popped is the answer and the route is a pure function of the map.

    Raises:
        ValueError: a station is on no line, the two are equal, or no route joins them.
    """
    if start == goal:
        raise ValueError(f"route from {start!r} to itself")
    order = {name: k for k, name in enumerate(lines)}
    index = {name: {s: i for i, s in enumerate(stops)} for name, stops in lines.items()}
    heap = [(0, 0, ((order[name], start),), name, start) for name in lines if start in index[name]]
    if not heap or not any(goal in idx for idx in index.values()):
        raise ValueError(f"station {start if not heap else goal!r} is on no line")
    heapq.heapify(heap)
    done: set[tuple[str, str]] = set()
    while heap:
        transfers, stops, steps, line, station = heapq.heappop(heap)
        if station == goal:
            return _legs(steps, list(lines))
        if (line, station) in done:
            continue
        done.add((line, station))
        i = index[line][station]
        for j in (i - 1, i + 1):
            if 0 <= j < len(lines[line]):
                nxt = lines[line][j]
                heapq.heappush(heap, (transfers, stops + 1, (*steps, (order[line], nxt)), line, nxt))
        for other in lines:
            if other != line and station in index[other]:
                heapq.heappush(heap, (transfers + 1, stops, (*steps, (order[other], station)), other, station))
    raise ValueError(f"no route from {start!r} to {goal!r}")


def _legs(steps: tuple, names: list[str]) -> list[Leg]:
    """Collapse (line, station) steps into legs; a step that changes line at the same station is a transfer."""
    legs, first = [], 0
    for k in range(1, len(steps) + 1):
        if k == len(steps) or steps[k][0] != steps[k - 1][0]:
            line, departure, arrival = names[steps[first][0]], steps[first][1], steps[k - 1][1]
            legs.append(Leg(line, departure, arrival, k - 1 - first))
            first = k
    return legs


def format_route(legs: Sequence[Leg]) -> str:
    """A route in the published answer format: sections separated by ``--``."""
    return "\n--\n".join(
        f"Route Name: {leg.line}\nDeparture Stop: {leg.departure}\nArrival Stop: {leg.arrival}" for leg in legs
    )
