"""Zone data for the lab DNS authority: records, scripted behaviours and lookups.

This module does no I/O. ``Zone.resolve`` turns a question into an ``Answer`` (rcode,
answer and authority RRsets) with the semantics of an authoritative server, and
``scanner.lab.dns_server`` puts answers on the wire and applies the behaviours.

Names are stored as keys: lowercased, without the trailing dot (``"mx1.normal.test"``).
Every ancestor of an owner name exists as a node, so an empty non-terminal such as
``normal.test`` for ``mx1.normal.test`` gets NODATA instead of NXDOMAIN (RFC 8020).

The lab is authoritative for every name it is asked about. Each top-level label of an
owner name (``test``, ``example``) is a zone apex that gets a synthesized SOA and NS
RRset, unless the data gives its own. Negative answers carry the SOA of the closest
enclosing name that has one (RFC 2308 section 3).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA

DEFAULT_TTL = 300
# RFC 2181 section 8: a TTL is an unsigned 31-bit number of seconds.
MAX_TTL = 2**31 - 1
# CNAME records followed for one question. A longer chain, or a loop, ends the
# answer section with the CNAMEs collected so far.
MAX_CNAME_CHAIN = 8
# RFC 1035 section 2.3.4: 63 octets a label, 255 octets a name on the wire, which
# leaves 253 characters in dotted text without the trailing dot.
MAX_LABEL_LENGTH = 63
MAX_NAME_LENGTH = 253

# Values of the synthesized SOA record (RFC 1035 section 3.3.13). The serial is fixed
# so that zone-file exports are reproducible.
SOA_SERIAL = 1
SOA_REFRESH = 3600
SOA_RETRY = 600
SOA_EXPIRE = 86400
# Apex whose SOA goes with negative answers about names that cannot be keys.
_UNKNOWN_APEX = "invalid"
# Host label of the synthesized NS record and SOA MNAME under each apex.
NAMESERVER_LABEL = "ns1"
HOSTMASTER_LABEL = "hostmaster"

_IN = dns.rdataclass.IN
# Query-only types, which a zone cannot hold (RFC 6895 section 3.1).
_META_TYPES = frozenset(
    {
        dns.rdatatype.ANY,
        dns.rdatatype.AXFR,
        dns.rdatatype.IXFR,
        dns.rdatatype.MAILA,
        dns.rdatatype.MAILB,
        dns.rdatatype.OPT,
        dns.rdatatype.TSIG,
        dns.rdatatype.TKEY,
        dns.rdatatype.NONE,
    }
)
_TOP_LEVEL_KEYS = frozenset({"records", "behaviours", "ttl"})
# Characters that dnspython writes with a backslash escape in names (besides space,
# control characters and a dot inside a label), so a key with one of them could not
# match a query's name.
_ESCAPED_CHARACTERS = '"();\\@$'
_ESCAPED_CHARACTER = re.compile(r'[\x00-\x20\x7f"();\\@$]')



class Behaviour(str, enum.Enum):
    """A scripted misbehaviour of the server for one owner name, for every type."""

    SERVFAIL = "servfail"
    REFUSED = "refused"
    FORMERR = "formerr"
    # Never reply, over UDP or TCP: the client times out.
    DROP = "drop"
    # Over UDP, reply with TC set and empty sections. TCP replies are complete.
    TRUNCATE = "truncate"
    # The answer section contains records whose owner is another name.
    MISMATCH = "mismatch"
    # NOERROR with an empty answer section and the SOA in authority, like NODATA.
    EMPTY = "empty"
    # Random bytes instead of a DNS message, with an ID that differs from the query's.
    GARBAGE = "garbage"


@dataclass(frozen=True)
class Answer:
    """The outcome of one question: rcode and the RRsets for two message sections."""

    rcode: dns.rcode.Rcode
    answer: tuple[dns.rrset.RRset, ...] = ()
    authority: tuple[dns.rrset.RRset, ...] = ()


class _Node:
    """The records at one owner name: rdata lists keyed by type, in insertion order.

    An empty non-terminal is a node without records. RRsets are built from the lists
    when a query first needs them and kept until the type changes, because building
    one hashes every rdata, which costs more than parsing it.
    """

    __slots__ = ("rdatas", "rrsets")

    def __init__(self) -> None:
        self.rdatas: dict[int, list[dns.rdata.Rdata]] = {}
        self.rrsets: dict[int, dns.rrset.RRset] = {}

    def types(self) -> list[int]:
        return [rdtype for rdtype, rdatas in self.rdatas.items() if rdatas]


def name_key(name: str | dns.name.Name) -> str:
    """Return the lookup key of a name: lowercased text without the trailing dot.

    Raises ValueError for an empty name, an empty label, a label over 63 characters, a
    name over 253 characters, non-ASCII text (IDNA-encode such names first) and for
    characters that DNS text escapes, because queries for such names would never
    match the key. Keys of ``Name`` objects keep dnspython's escapes.
    """
    if isinstance(name, dns.name.Name):
        return name.to_text(omit_final_dot=True).lower()

    text = name[:-1] if name.endswith(".") else name
    if not text:
        raise ValueError(f"invalid DNS name {name!r}: the root name has no records here")
    if not text.isascii():
        raise ValueError(f"invalid DNS name {name!r}: IDNA-encode non-ASCII names first")
    if _ESCAPED_CHARACTER.search(text):
        raise ValueError(
            f"invalid DNS name {name!r}: space, control characters and "
            f"the characters {_ESCAPED_CHARACTERS} are not supported in lab names"
        )
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(
            f"invalid DNS name {name!r}: longer than {MAX_NAME_LENGTH} characters"
        )
    for label in text.split("."):
        if not label:
            raise ValueError(f"invalid DNS name {name!r}: empty label")
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(
                f"invalid DNS name {name!r}: label {label!r} is longer than {MAX_LABEL_LENGTH}"
            )
    return text.lower()


def _parent_keys(key: str) -> Iterator[str]:
    """Yield the keys of the ancestors of ``key``, nearest first, ending at the apex."""
    while "." in key:
        key = key.split(".", 1)[1]
        yield key


def _apex_of(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def _absolute_name(key: str) -> dns.name.Name:
    return dns.name.from_text(key + ".")


def parse_type(rdtype: str | int) -> int:
    """Return the numeric RR type for a mnemonic such as ``"MX"`` or a number.

    Raises ValueError for an unknown mnemonic or a query-only type such as ANY.
    """
    try:
        value = dns.rdatatype.RdataType.make(rdtype)
    except (dns.rdatatype.UnknownRdatatype, ValueError) as error:
        raise ValueError(f"unknown RR type {rdtype!r}") from error
    if value in _META_TYPES:
        raise ValueError(f"RR type {rdtype!r} exists only in queries and cannot be stored")
    return value


# Parsed values of the fast-path types, shared between owners because benchmark
# worlds point many domains at a few mail hosts. Rdata objects are immutable, so
# sharing is safe. When full, the cache is emptied and fills again.
RDATA_CACHE_SIZE = 100_000
_rdata_cache: dict[tuple[int, str], dns.rdata.Rdata] = {}


def parse_rdata(rdtype: int, value: str) -> dns.rdata.Rdata:
    """Parse one value in master-file text; relative names are taken as absolute.

    A, AAAA, MX, CNAME and NS take a fast path that skips dnspython's tokenizer, which
    matters when a benchmark builds a world of 100,000+ domains. Raises ValueError.
    """
    text = value.strip()
    cached = _rdata_cache.get((rdtype, text))
    if cached is not None:
        return cached

    try:
        if rdtype == dns.rdatatype.A:
            rdata: dns.rdata.Rdata = A(_IN, rdtype, text)
        elif rdtype == dns.rdatatype.AAAA:
            rdata = AAAA(_IN, rdtype, text)
        elif rdtype == dns.rdatatype.MX:
            fields = text.split()
            if len(fields) != 2:
                raise ValueError(f"invalid MX value {value!r}: expected 'PREFERENCE EXCHANGE'")
            rdata = MX(_IN, rdtype, int(fields[0]), _parse_target(fields[1]))
        elif rdtype == dns.rdatatype.CNAME:
            rdata = CNAME(_IN, rdtype, _parse_target(text))
        elif rdtype == dns.rdatatype.NS:
            rdata = NS(_IN, rdtype, _parse_target(text))
        else:
            return dns.rdata.from_text(_IN, rdtype, value, origin=dns.name.root)
    except (dns.exception.DNSException, ValueError, TypeError) as error:
        raise ValueError(str(error) or type(error).__name__) from error

    if len(_rdata_cache) >= RDATA_CACHE_SIZE:
        _rdata_cache.clear()
    _rdata_cache[(rdtype, text)] = rdata
    return rdata


def _parse_target(text: str) -> dns.name.Name:
    # The root name "." is a valid target: the null MX of RFC 7505 is "0 .".
    if text != ".":
        name_key(text)
    return dns.name.from_text(text, origin=dns.name.root)


class Zone:
    """Records and behaviours of the lab, keyed by lowercased owner name.

    Build it with ``Zone.from_dict`` from the YAML form, or programmatically with
    ``add`` and ``set_behaviour``. Lookups are dict accesses, so a world of 100,000+
    domains gets replies as fast as a small one. A running server uses changes at once.
    """

    def __init__(self, ttl: int = DEFAULT_TTL) -> None:
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 0 <= ttl <= MAX_TTL:
            raise ValueError(f"invalid ttl {ttl!r}: expected an integer from 0 to {MAX_TTL}")
        self.ttl = ttl
        # Incremented by every change, so that a reply cache can tell when it is stale.
        self.version = 0
        self._nodes: dict[str, _Node] = {}
        self._behaviours: dict[str, Behaviour] = {}
        # (apex key, type) of the SOA and NS RRsets that the zone made up, which given
        # data replaces.
        self._synthesized: set[tuple[str, int]] = set()
        # Authority sections of negative answers, by the key of the SOA owner.
        self._negative_cache: dict[str, tuple[dns.rrset.RRset, ...]] = {}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Zone:
        """Build a zone from the mapping that a lab YAML file loads into.

        Raises ValueError naming the bad entry, as in ``records['a.test']['MX'][1]``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(
                f"invalid zone data: expected a mapping, got {type(data).__name__}"
            )
        unknown = sorted(str(key) for key in data if key not in _TOP_LEVEL_KEYS)
        if unknown:
            raise ValueError(
                f"invalid zone data: unknown keys {unknown}, expected {sorted(_TOP_LEVEL_KEYS)}"
            )

        try:
            zone = cls(ttl=data.get("ttl", DEFAULT_TTL))  # type: ignore[arg-type]
        except ValueError as error:
            raise ValueError(f"ttl: {error}") from None
        zone._load_records(data.get("records") or {})
        zone._load_behaviours(data.get("behaviours") or {})
        return zone

    def _load_records(self, records: object) -> None:
        if not isinstance(records, Mapping):
            raise ValueError(f"records: expected a mapping of owner names, got {records!r}")

        for owner, types in records.items():
            where = f"records[{owner!r}]"
            if not isinstance(owner, str):
                raise ValueError(f"{where}: owner name must be a string")
            if not isinstance(types, Mapping):
                raise ValueError(f"{where}: expected a mapping of RR types to value lists")

            for rdtype, values in types.items():
                if isinstance(values, str):
                    values = [values]
                if not isinstance(values, list):
                    raise ValueError(f"{where}[{rdtype!r}]: expected a list of values")
                for index, value in enumerate(values):
                    try:
                        self.add(owner, rdtype, value)
                    except ValueError as error:
                        raise ValueError(f"{where}[{rdtype!r}][{index}]: {error}") from None

    def _load_behaviours(self, behaviours: object) -> None:
        if not isinstance(behaviours, Mapping):
            raise ValueError(
                f"behaviours: expected a mapping of owner names, got {behaviours!r}"
            )

        for owner, behaviour in behaviours.items():
            try:
                self.set_behaviour(owner, behaviour)
            except ValueError as error:
                raise ValueError(f"behaviours[{owner!r}]: {error}") from None

    def add(self, name: str, rdtype: str | int, value: str | dns.rdata.Rdata) -> None:
        """Add one record, given as master-file text such as ``"10 mx1.normal.test."``.

        Values follow master-file rules, so a TXT value with spaces needs quotes:
        ``'"v=spf1 -all"'`` is one string, ``"v=spf1 -all"`` is two. Replies and
        exports list a value that was added twice only once. A second SOA replaces
        the first. Raises ValueError for an invalid name, type or value, and
        for a CNAME beside other data at the same name (RFC 1034 section 3.6.2).
        """
        key = name_key(name)
        type_value = parse_type(rdtype)
        if isinstance(value, dns.rdata.Rdata):
            rdata = value
            if rdata.rdtype != type_value:
                raise ValueError(f"rdata of type {rdata.rdtype.name} given for type {rdtype}")
        elif isinstance(value, str):
            rdata = parse_rdata(type_value, value)
        else:
            raise ValueError(f"invalid value {value!r}: expected master-file text")

        node = self._node_for(key)
        if (key, type_value) in self._synthesized:
            self._synthesized.discard((key, type_value))
            del node.rdatas[type_value]
        self._check_cname_rules(key, node, type_value)

        self.version += 1
        node.rrsets.pop(type_value, None)
        if type_value == dns.rdatatype.SOA:
            node.rdatas[type_value] = [rdata]
            self._negative_cache.clear()
        else:
            node.rdatas.setdefault(type_value, []).append(rdata)

    def _node_for(self, key: str) -> _Node:
        """Return the node of ``key``, creating it and its ancestors as needed."""
        node = self._nodes.get(key)
        if node is not None:
            return node

        node = self._nodes[key] = _Node()
        for parent in _parent_keys(key):
            if parent in self._nodes:
                break
            self._nodes[parent] = _Node()
        self._synthesize_apex(_apex_of(key))
        return node

    def _synthesize_apex(self, apex: str) -> None:
        node = self._nodes[apex]
        if node.rdatas or (apex, dns.rdatatype.SOA) in self._synthesized:
            return
        for rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            node.rdatas[rdtype] = self._apex_rdatas(apex, rdtype)
            self._synthesized.add((apex, rdtype))

    def _apex_rdatas(self, key: str, rdtype: int) -> list[dns.rdata.Rdata]:
        """Return the synthesized SOA or NS values for the apex ``key``."""
        nameserver = _absolute_name(f"{NAMESERVER_LABEL}.{key}")
        if rdtype == dns.rdatatype.NS:
            return [NS(_IN, rdtype, nameserver)]
        hostmaster = _absolute_name(f"{HOSTMASTER_LABEL}.{key}")
        soa = SOA(
            _IN, rdtype, nameserver, hostmaster,
            SOA_SERIAL, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, self.ttl,
        )
        return [soa]

    @staticmethod
    def _check_cname_rules(key: str, node: _Node, rdtype: int) -> None:
        types = node.types()
        other_types = [
            dns.rdatatype.to_text(existing)
            for existing in types
            if existing != dns.rdatatype.CNAME
        ]
        has_cname = dns.rdatatype.CNAME in types
        if rdtype == dns.rdatatype.CNAME and other_types:
            raise ValueError(f"CNAME at {key!r} cannot coexist with {', '.join(other_types)}")
        if rdtype == dns.rdatatype.CNAME and has_cname:
            raise ValueError(f"{key!r} already has a CNAME, and a name can have only one")
        if rdtype != dns.rdatatype.CNAME and has_cname:
            raise ValueError(
                f"{dns.rdatatype.to_text(rdtype)} at {key!r} cannot coexist with its CNAME"
            )

    def set_behaviour(self, name: str, behaviour: Behaviour | str) -> None:
        """Script how the server misbehaves for questions about exactly this name."""
        key = name_key(name)
        try:
            self._behaviours[key] = Behaviour(behaviour)
        except ValueError:
            choices = ", ".join(item.value for item in Behaviour)
            raise ValueError(
                f"unknown behaviour {behaviour!r}, expected one of: {choices}"
            ) from None
        self.version += 1

    def clear_behaviour(self, name: str) -> None:
        self._behaviours.pop(name_key(name), None)
        self.version += 1

    def behaviour(self, name: str | dns.name.Name) -> Behaviour | None:
        return self._behaviours.get(name_key(name))

    def rdatas(self, name: str | dns.name.Name, rdtype: str | int) -> list[dns.rdata.Rdata]:
        """Return the distinct values stored for ``name`` and ``rdtype``, in order."""
        key = name_key(name)
        node = self._nodes.get(key)
        if node is None:
            return []
        rrset = self._rrset(key, node, parse_type(rdtype))
        return [] if rrset is None else list(rrset)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (str, dns.name.Name)):
            return False
        return name_key(name) in self._nodes

    def __len__(self) -> int:
        """Return the number of names, empty non-terminals and apexes included."""
        return len(self._nodes)

    def resolve(self, qname: dns.name.Name, qtype: int) -> Answer:
        """Answer a question as an authoritative server would, ignoring behaviours.

        Follows CNAMEs within the zone (RFC 1034 section 4.3.2): the answer contains the
        chain, then the target's RRset. The rcode is that of the last name in the
        chain (RFC 6604). A loop, or a chain longer than MAX_CNAME_CHAIN CNAMEs, ends
        the answer with the CNAMEs collected so far and NOERROR. Owner names in the
        answer are the zone's lowercase ones, whatever the case of ``qname``.
        """
        answer: list[dns.rrset.RRset] = []
        key = name_key(qname)
        seen = {key}

        for hop in range(MAX_CNAME_CHAIN + 1):
            node = self._nodes.get(key)
            if node is None:
                return Answer(dns.rcode.NXDOMAIN, tuple(answer), self._negative_soa(key))

            if qtype == dns.rdatatype.ANY:
                for rdtype in node.types():
                    answer.append(self._rrset(key, node, rdtype))  # type: ignore[arg-type]
                return self._positive(answer, key)

            rrset = self._rrset(key, node, qtype)
            if rrset is not None:
                answer.append(rrset)
                return Answer(dns.rcode.NOERROR, tuple(answer))

            cname = self._rrset(key, node, dns.rdatatype.CNAME)
            if cname is None or qtype == dns.rdatatype.CNAME:
                return Answer(dns.rcode.NOERROR, tuple(answer), self._negative_soa(key))
            if hop == MAX_CNAME_CHAIN:
                break

            answer.append(cname)
            key = name_key(cname[0].target)
            if key in seen:
                break
            seen.add(key)

        return Answer(dns.rcode.NOERROR, tuple(answer))

    def _rrset(self, key: str, node: _Node, rdtype: int) -> dns.rrset.RRset | None:
        """Return the RRset of ``rdtype`` at ``node``, building it on first use."""
        rrset = node.rrsets.get(rdtype)
        if rrset is not None:
            return rrset
        rdatas = node.rdatas.get(rdtype)
        if not rdatas:
            return None
        rrset = dns.rrset.from_rdata_list(_absolute_name(key), self.ttl, rdatas)
        node.rrsets[rdtype] = rrset
        return rrset

    def _positive(self, answer: list[dns.rrset.RRset], key: str) -> Answer:
        if answer:
            return Answer(dns.rcode.NOERROR, tuple(answer))
        return Answer(dns.rcode.NOERROR, (), self._negative_soa(key))

    def negative_soa(self, name: str | dns.name.Name) -> tuple[dns.rrset.RRset, ...]:
        """Return the authority section of a negative answer about ``name``."""
        return self._negative_soa(name_key(name))

    def _negative_soa(self, key: str) -> tuple[dns.rrset.RRset, ...]:
        """Return the SOA of the closest enclosing name that has one, or a synthesized one.

        RFC 2308 section 3: its TTL is the lower of the SOA's TTL and its MINIMUM.
        """
        for candidate in (key, *_parent_keys(key)):
            node = self._nodes.get(candidate)
            if node is not None and node.rdatas.get(dns.rdatatype.SOA):
                soa = node.rdatas[dns.rdatatype.SOA][0]
                break
        else:
            candidate = _apex_of(key)
            if not candidate or "\\" in candidate:
                # The query name has escaped bytes, which no stored name has, and
                # splitting its text at dots may have cut an escape in two.
                candidate = _UNKNOWN_APEX
            soa = self._apex_rdatas(candidate, dns.rdatatype.SOA)[0]

        cached = self._negative_cache.get(candidate)
        if cached is None:
            ttl = min(self.ttl, soa.minimum)
            rrset = dns.rrset.from_rdata_list(_absolute_name(candidate), ttl, [soa])
            cached = self._negative_cache[candidate] = (rrset,)
        return cached

    def to_zonefile(self, origin: str) -> str:
        """Render the names at or below ``origin`` as RFC 1035 master-file text.

        The text starts with the SOA and NS RRsets of the origin (given ones, or
        synthesized ones naming ``ns1.<origin>``) and writes every owner as an
        absolute name. Behaviours cannot be expressed in a zone file, so each one under
        the origin becomes a comment line.
        """
        origin_key = name_key(origin)
        origin_name = _absolute_name(origin_key)
        lines = [f"$ORIGIN {origin_name}", f"$TTL {self.ttl}"]

        origin_node = self._nodes.get(origin_key, _Node())
        for rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
            rdatas = origin_node.rdatas.get(rdtype) or self._apex_rdatas(origin_key, rdtype)
            lines.extend(self._zonefile_lines(origin_name, rdtype, rdatas))

        for key, node in self._nodes.items():
            if not _is_at_or_below(key, origin_key):
                continue
            owner = _absolute_name(key)
            for rdtype, rdatas in node.rdatas.items():
                if key == origin_key and rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS):
                    continue
                lines.extend(self._zonefile_lines(owner, rdtype, rdatas))

        for key, behaviour in self._behaviours.items():
            if _is_at_or_below(key, origin_key):
                lines.append(f"; {key}. has the lab-only behaviour {behaviour.value!r}")
        return "\n".join(lines) + "\n"

    def _zonefile_lines(
        self, owner: dns.name.Name, rdtype: int, rdatas: Iterable[dns.rdata.Rdata]
    ) -> Iterator[str]:
        """Yield one master-file line per distinct value, in insertion order."""
        type_text = dns.rdatatype.to_text(rdtype)
        written: set[str] = set()
        for rdata in rdatas:
            text = rdata.to_text()
            if text not in written:
                written.add(text)
                yield f"{owner} {self.ttl} IN {type_text} {text}"


def _is_at_or_below(key: str, origin_key: str) -> bool:
    return key == origin_key or key.endswith("." + origin_key)
