"""SDP text helpers for the shapes KVS storage sessions use (docs/wire.md, "Storage sessions").

Both halves use them: Local KVS to write offers in AWS's shape from aiortc's (payload types
126/111, a configurable H.264 profile, candidates trickled apart, the ``m=video 0`` +
``a=bundle-only`` variant), and the kvsnb client to make such offers acceptable to aiortc
(bundle-only sections), to read what an offer lists (``codecs``) and to trickle its
candidates once per bundled transport (``bundled_candidates``).

Only line-level edits: parsing into objects is aiortc's (``aiortc.sdp``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ICE_ATTRS = ("a=ice-ufrag:", "a=ice-pwd:", "a=fingerprint:", "a=setup:", "a=ice-options:")


@dataclass(frozen=True)
class CandidateLine:
    """A candidate taken out of an SDP: ``candidate`` is the attribute value
    (``candidate:...``) as trickled in an ICE_CANDIDATE payload."""

    candidate: str
    sdp_mid: str | None
    sdp_mline_index: int


def _sections(sdp: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in sdp.replace("\r\n", "\n").split("\n") if ln]
    head: list[str] = []
    sections: list[list[str]] = []
    for ln in lines:
        if ln.startswith("m="):
            sections.append([ln])
        elif sections:
            sections[-1].append(ln)
        else:
            head.append(ln)
    return head, sections


def _join(head: list[str], sections: Iterable[list[str]]) -> str:
    out = list(head)
    for s in sections:
        out += s
    return "\r\n".join(out) + "\r\n"


def _mid(section: list[str]) -> str | None:
    for ln in section:
        if ln.startswith("a=mid:"):
            return ln[len("a=mid:") :]
    return None


def split_candidates(sdp: str) -> tuple[str, list[CandidateLine]]:
    """Remove ``a=candidate`` and ``a=end-of-candidates`` lines; return the SDP and the
    candidates with their m-line index and mid (for trickling)."""
    head, sections = _sections(sdp)
    found: list[CandidateLine] = []
    kept_sections = []
    for index, section in enumerate(sections):
        mid = _mid(section)
        kept = []
        for ln in section:
            if ln.startswith("a=candidate:"):
                found.append(CandidateLine(ln[2:], mid, index))
            elif ln != "a=end-of-candidates":
                kept.append(ln)
        kept_sections.append(kept)
    return _join(head, kept_sections), found


def rename_payload_types(sdp: str, mapping: Mapping[int, int]) -> str:
    """Renumber RTP payload types in m-lines, rtpmap/fmtp/rtcp-fb and RTX ``apt=``."""
    if not mapping:
        return sdp

    def pt(value: str) -> str:
        return str(mapping.get(int(value), int(value))) if value.isdigit() else value

    head, sections = _sections(sdp)
    out = []
    for section in sections:
        new = []
        for ln in section:
            if ln.startswith("m="):
                parts = ln.split(" ")
                ln = " ".join(parts[:3] + [pt(p) for p in parts[3:]])
            else:
                m = re.match(r"^a=(rtpmap|fmtp|rtcp-fb):(\d+)(.*)$", ln)
                if m:
                    ln = f"a={m[1]}:{pt(m[2])}{m[3]}"
                ln = re.sub(r"\bapt=(\d+)", lambda a: f"apt={pt(a[1])}", ln)
            new.append(ln)
        out.append(new)
    return _join(head, out)


def payload_types(sdp: str, kind: str, codec: str) -> list[int]:
    """Payload types of a codec (e.g. ``H264``, ``opus``, ``rtx``) in the m-sections of a
    kind."""
    _, sections = _sections(sdp)
    found: list[int] = []
    for section in sections:
        if not section[0].startswith(f"m={kind} "):
            continue
        for ln in section:
            m = re.match(r"^a=rtpmap:(\d+) ([^/]+)/", ln)
            if m and m[2].lower() == codec.lower():
                found.append(int(m[1]))
    return found


def fmtp(sdp: str, payload_type: int) -> dict[str, str]:
    """The ``a=fmtp`` parameters of a payload type."""
    for ln in sdp.replace("\r\n", "\n").split("\n"):
        if ln.startswith(f"a=fmtp:{payload_type} "):
            out: dict[str, str] = {}
            for p in ln.split(" ", 1)[1].split(";"):
                key, _, value = p.strip().partition("=")
                if key:
                    out[key] = value
            return out
    return {}


def set_fmtp(sdp: str, payload_type: int, **params: str) -> str:
    """Set (add or replace) ``a=fmtp`` parameters of a payload type; ``_`` in a keyword
    becomes ``-`` (``profile_level_id`` → ``profile-level-id``)."""
    wanted = {k.replace("_", "-"): v for k, v in params.items()}
    lines = sdp.replace("\r\n", "\n").split("\n")
    for i, ln in enumerate(lines):
        if ln.startswith(f"a=fmtp:{payload_type} "):
            current = fmtp(sdp, payload_type)
            current.update(wanted)
            lines[i] = f"a=fmtp:{payload_type} " + ";".join(f"{k}={v}" for k, v in current.items())
            return "\r\n".join(ln for ln in lines if ln) + "\r\n"
    return sdp


def make_bundle_only(sdp: str, kind: str = "video") -> str:
    """Turn the first m-section of ``kind`` into ``m=<kind> 0`` with ``a=bundle-only`` and no
    transport attributes of its own (it rides the BUNDLE's first transport)."""
    head, sections = _sections(sdp)
    for section in sections:
        if section[0].startswith(f"m={kind} "):
            parts = section[0].split(" ")
            parts[1] = "0"
            section[0] = " ".join(parts)
            section[:] = [ln for ln in section if not ln.startswith(ICE_ATTRS)]
            section[:] = [ln for ln in section if not ln.startswith("a=candidate:")]
            section.insert(1, "a=bundle-only")
            break
    return _join(head, sections)


def expand_bundle_only(sdp: str) -> str:
    """Make a bundle-only section explicit for parsers that need per-section transport
    attributes (aiortc): port 9, no ``a=bundle-only``, ICE and DTLS attributes copied from
    the first section of the BUNDLE."""
    head, sections = _sections(sdp)
    if not sections:
        return sdp
    donor = [ln for ln in sections[0] if ln.startswith(ICE_ATTRS)]
    for section in sections:
        if "a=bundle-only" not in section:
            continue
        parts = section[0].split(" ")
        if parts[1] == "0":
            parts[1] = "9"
        section[0] = " ".join(parts)
        section[:] = [ln for ln in section if ln != "a=bundle-only"]
        have = {ln.split(":", 1)[0] for ln in section if ln.startswith(ICE_ATTRS)}
        section[1:1] = [ln for ln in donor if ln.split(":", 1)[0] not in have]
    return _join(head, sections)


def directions(sdp: str) -> list[tuple[str, str, int]]:
    """``(kind, direction, port)`` of each m-section, in order."""
    _, sections = _sections(sdp)
    out = []
    for section in sections:
        kind, port = section[0][2:].split(" ")[:2]
        direction = "sendrecv"
        for ln in section:
            if ln[2:] in ("sendrecv", "sendonly", "recvonly", "inactive") and ln.startswith("a="):
                direction = ln[2:]
        out.append((kind, direction, int(port)))
    return out


@dataclass(frozen=True)
class Codec:
    """A codec of an m-section: payload type, name, clock rate (and channels), fmtp."""

    payload_type: int
    name: str
    clock: str
    params: dict[str, str]

    def describe(self) -> str:
        """``H264/90000 (PT 126; profile-level-id=640c1f;packetization-mode=1)``."""
        fmtp = ";".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.name}/{self.clock} (PT {self.payload_type}{'; ' + fmtp if fmtp else ''})"


def codecs(sdp: str, kind: str) -> list[Codec]:
    """The codecs (rtpmap, with their fmtp) of the m-sections of a kind, in order, RTX
    excluded."""
    _, sections = _sections(sdp)
    found: list[Codec] = []
    for section in sections:
        if not section[0].startswith(f"m={kind} "):
            continue
        for ln in section:
            m = re.match(r"^a=rtpmap:(\d+) ([^/]+)/(\S+)", ln)
            if m and m[2].lower() != "rtx":
                found.append(Codec(int(m[1]), m[2], m[3], fmtp(sdp, int(m[1]))))
    return found


def bundled_candidates(candidates: Iterable[CandidateLine], sdp: str) -> list[CandidateLine]:
    """The candidates of the first m-section of the BUNDLE group (all of them when there is
    no group): with a bundled transport every m-section lists the same candidates, and each
    is trickled once (as browsers and the JS SDK do)."""
    head, sections = _sections(sdp)
    group = next((ln.split()[1:] for ln in head if ln.startswith("a=group:BUNDLE")), None)
    items = list(candidates)
    if not group:
        return items
    first = group[0]
    index = next((i for i, s in enumerate(sections) if _mid(s) == first), 0)
    return [c for c in items if c.sdp_mline_index == index]


def ice_ufrag(sdp: str) -> str | None:
    """The first ``a=ice-ufrag`` of a description (session or media level)."""
    for ln in sdp.replace("\r\n", "\n").split("\n"):
        if ln.startswith("a=ice-ufrag:"):
            return ln[len("a=ice-ufrag:") :].strip()
    return None


def codec_names(sdp: str, kind: str) -> list[str]:
    """Codec names (rtpmap) offered or accepted in the m-sections of a kind, RTX excluded."""
    _, sections = _sections(sdp)
    names: list[str] = []
    for section in sections:
        if section[0].startswith(f"m={kind} "):
            for ln in section:
                m = re.match(r"^a=rtpmap:\d+ ([^/]+)/", ln)
                if m and m[1].lower() != "rtx":
                    names.append(m[1])
    return names
