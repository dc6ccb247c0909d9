"""The probe stage: sessions scheduled under the sweep's limits.

``Prober.probe`` runs the address probe (banner, EHLO or HELO, STARTTLS when
advertised, QUIT) at most once per address and sweep, and shares the result among
all domains whose MX hosts have that address. ``Prober.recipient`` runs the recipient
probe, one session per domain and address, under a per-address concurrency and rate
limit. Every session also takes one of the sweep's connection slots.
``scanner.probe.session`` performs the steps; whatever goes wrong becomes a
``Failure`` through the one table in ``scanner.errors``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets

from ..config import Settings
from ..errors import failure_from_exception
from ..results import Failure, Phase, ProbeResult, Reason, RecipientResult, RecipientVerdict
from ..tls import TrustStore, client_context, name_matches
from .limits import AddressLimiter
from .session import RecipientPlan, SessionPlan, SessionResult, SessionRunner, reply_record

log = logging.getLogger(__name__)

__all__ = ["Prober", "RecipientPlan", "SessionPlan", "SessionResult", "catch_all_address", "for_exchange", "reply_record", "skipped"]

# Length of the random local part of the catch-all address, in hex digits: 48 bits,
# so no real mailbox has that name by chance.
_CATCH_ALL_HEX_DIGITS = 12


def catch_all_address(domain: str) -> str:
    """Return an address at ``domain`` that no one has: a random local part."""
    return f"mxscan-{secrets.token_hex(_CATCH_ALL_HEX_DIGITS // 2)}@{domain}"


class Prober:
    """Runs sessions with a bound on open connections and a per-sweep cache by address."""

    def __init__(self, settings: Settings, trust_store: TrustStore | None = None) -> None:
        self.settings = settings
        if trust_store is None and settings.tls.starttls:
            trust_store = TrustStore.load(settings.tls.ca_file)
        self.runner = SessionRunner(settings, client_context(), trust_store)
        self._slots = asyncio.Semaphore(settings.connection_limit)
        recipient = settings.recipient
        self._recipient_limiter = AddressLimiter(recipient.per_address_sessions, recipient.per_address_rate)
        # NOTE: never pruned, so that each address is probed once per sweep; memory
        # grows with the distinct addresses a sweep meets (a few KB each).
        self._cache: dict[str, asyncio.Future[ProbeResult]] = {}
        self.connections = 0

    def probe(self, address: str, hostname: str | None = None) -> "asyncio.Future[ProbeResult]":
        """Return the probe of ``address``, starting it unless another domain already has.

        The probe that starts sends ``hostname`` (an MX name of the address) as TLS SNI.
        A cached probe keeps the name it started with.
        """
        future = self._cache.get(address)
        if future is None:
            plan = SessionPlan(starttls=self.settings.tls.starttls, tls_hostname=hostname)
            future = asyncio.ensure_future(self._probe_guarded(address, plan))
            self._cache[address] = future
        return asyncio.shield(future)

    async def _probe_guarded(self, address: str, plan: SessionPlan) -> ProbeResult:
        async with self._slots:
            self.connections += 1
            try:
                return (await self.runner.run(address, plan)).probe
            except Exception as exc:  # a bug must become this address's record, not a dead sweep
                log.exception("probe of %s failed inside mxscan", address)
                failure = failure_from_exception(exc, Phase.SCANNER)
                return ProbeResult(address=address, port=self.settings.smtp.port, connected=False, completed=False, failure=failure)

    async def recipient(self, address: str, domain: str, hostname: str | None, use_tls: bool) -> RecipientResult:
        """Run the recipient probe for ``domain`` on ``address``: MAIL, RCPT, RSET, QUIT.

        ``use_tls`` requests STARTTLS first, as a sending MTA would when the address
        probe's handshake completed. The plan carries no message, so no DATA is sent.
        """
        settings = self.settings.recipient
        plan = SessionPlan(
            starttls=use_tls,
            tls_hostname=hostname,
            certificate_facts=False,
            recipient=RecipientPlan(
                rcpt_address=settings.address_for(domain),
                sender=settings.sender,
                catch_all_address=catch_all_address(domain) if settings.catch_all else None,
            ),
        )
        async with self._recipient_limiter.slot(address):
            async with self._slots:
                self.connections += 1
                try:
                    result = await self.runner.run(address, plan)
                except Exception as exc:  # a bug must become this domain's record, not a dead sweep
                    log.exception("recipient probe of %s on %s failed inside mxscan", domain, address)
                    return RecipientResult(
                        rcpt_address=plan.recipient.rcpt_address,
                        sender=plan.recipient.sender,
                        verdict=RecipientVerdict.NO_VERDICT,
                        failure=failure_from_exception(exc, Phase.SCANNER),
                    )
        assert result.recipient is not None
        return result.recipient

    async def session(self, address: str, plan: SessionPlan) -> SessionResult:
        """Run one session with ``plan`` outside the cache, as ``mxscan check`` does."""
        async with self._slots:
            self.connections += 1
            return await self.runner.run(address, plan)


def skipped(reason: Reason, message: str) -> Failure:
    return Failure(phase=Phase.POLICY, reason=reason, message=message)


def for_exchange(probe: ProbeResult, exchange_name: str) -> ProbeResult:
    """Return the cached probe of an address as seen from one of its MX names.

    The probe is shared by every MX name with that address, so whether the
    certificate names the host is decided here, per exchange name.
    """
    tls = probe.tls
    if tls is None or tls.certificate is None:
        return probe
    matches = name_matches(tls.certificate, exchange_name)
    return dataclasses.replace(probe, tls=dataclasses.replace(tls, name_matches=matches))
