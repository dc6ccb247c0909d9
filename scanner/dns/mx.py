"""From an MX answer to the ordered list of mail exchanges to try, without I/O.

RFC 5321 section 5.1: a sender tries the exchanges in order of preference, lowest
first; when a domain has no MX records but has an address, the domain itself is the
one exchange ("implicit MX", preference 0). RFC 7505: a single MX record with
preference 0 and the root as exchange ("0 .") says the domain accepts no mail.
"""

from __future__ import annotations

import dataclasses
import ipaddress

from ..results import MxSource


@dataclasses.dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    preference: int
    ip_literal: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class MxPlan:
    """The exchanges to try, where they came from, and how many the cap left out."""

    source: MxSource
    exchanges: tuple[Exchange, ...] = ()
    left_out: int = 0


def _is_root(exchange: str) -> bool:
    return exchange in ("", ".")


def is_ip_literal(name: str) -> bool:
    """Return whether an MX target is an address rather than a host name (invalid, but published)."""
    text = name.rstrip(".")
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def plan_from_mx(records: list[tuple[int, str]], max_exchanges: int) -> MxPlan | None:
    """Order MX records into a plan; ``None`` when there are none (the caller tries implicit MX).

    Equal preferences are ordered by name, not at random as RFC 5321 suggests for
    delivery, so that two sweeps of the same data give the same record. A null MX
    next to real MX records breaks RFC 7505 section 3; the real ones are kept.
    """
    if not records:
        return None
    if len(records) == 1 and _is_root(records[0][1]):
        return MxPlan(MxSource.NULL)

    best: dict[str, int] = {}
    for preference, exchange in records:
        if _is_root(exchange):
            continue
        name = exchange.lower().rstrip(".")
        if name not in best or preference < best[name]:
            best[name] = preference
    if not best:
        return MxPlan(MxSource.NULL)

    ordered = sorted(best.items(), key=lambda item: (item[1], item[0]))
    kept = ordered[:max_exchanges]
    exchanges = tuple(Exchange(name, preference, is_ip_literal(name)) for name, preference in kept)
    return MxPlan(MxSource.MX, exchanges, left_out=len(ordered) - len(kept))


def implicit_plan(domain: str) -> MxPlan:
    return MxPlan(MxSource.IMPLICIT, (Exchange(domain, 0),))
