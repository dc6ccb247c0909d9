"""A domain's overall status and reason, decided from its exchanges' results, without I/O."""

from __future__ import annotations

from .results import ExchangeResult, Failure, Phase, Reason, Status

# Failures of the exchanges' own lookups that mean the resolver had trouble, as
# opposed to the names simply having no address.
_DNS_TROUBLE = {
    Reason.SERVFAIL,
    Reason.DNS_REFUSED,
    Reason.DNS_TIMEOUT,
    Reason.DNS_BAD_RESPONSE,
    Reason.DNS_FAILURE,
    Reason.CNAME_LOOP,
}


def domain_status(exchanges: tuple[ExchangeResult, ...]) -> tuple[Status, Failure | None]:
    """Decide the status from exchanges in preference order.

    Reachable when any address completed the handshake. Otherwise the reason is the
    first failure met in preference order, which is the one a sending MTA would have
    hit first.
    """
    probe_failures: list[Failure] = []
    skips: list[Failure] = []
    exchange_failures: list[Failure] = []

    for exchange in exchanges:
        if exchange.failure is not None:
            exchange_failures.append(exchange.failure)
        for address in exchange.addresses:
            if address.probe is not None:
                if address.probe.completed:
                    return Status.REACHABLE, None
                if address.probe.failure is not None:
                    probe_failures.append(address.probe.failure)
            elif address.skipped is not None:
                skips.append(address.skipped)

    if probe_failures:
        return Status.UNREACHABLE, probe_failures[0]
    if skips and not exchange_failures:
        return Status.NOT_PROBED, skips[0]
    if exchange_failures:
        if all(failure.reason in _DNS_TROUBLE for failure in exchange_failures):
            return Status.DNS_ERROR, exchange_failures[0]
        return Status.UNREACHABLE, exchange_failures[0]
    if skips:
        return Status.NOT_PROBED, skips[0]
    return Status.UNREACHABLE, Failure(Phase.DNS, Reason.NO_ADDRESS, "no exchange has an address")
