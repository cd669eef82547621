"""H.264 bitstream pieces that the kvsnb client and Local KVS share: NAL unit types, Annex-B
and length-prefixed (avcC / Matroska) framing, SPS fields, the avcC record and profile names
(ITU-T H.264 7.3.2.1.1; ISO/IEC 14496-15 5.3.3.1). Bytes in, bytes or numbers out: nothing
here decodes pictures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NAL_SLICE = 1
NAL_IDR = 5
NAL_SEI = 6
NAL_SPS = 7
NAL_PPS = 8
NAL_AUD = 9
NAL_TYPE_MASK = 0x1F  # nal_unit_type: the low 5 bits of a NAL unit's first byte
START_CODE = b"\x00\x00\x01"  # Annex B; a 4-byte start code is a zero byte and this
HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
PROFILE_NAMES = {
    66: "Baseline",
    77: "Main",
    88: "Extended",
    100: "High",
    110: "High 10",
    122: "High 4:2:2",
    244: "High 4:4:4 Predictive",
}
CONSTRAINT_SET1 = 0x40  # constraint_set1_flag: the stream obeys Constrained Baseline


def nal_type(nal: bytes) -> int:
    """The nal_unit_type of a NAL unit (its first byte's low 5 bits)."""
    return nal[0] & NAL_TYPE_MASK


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex-B byte string (3- or 4-byte start codes) into NAL units."""
    nals: list[bytes] = []
    i = data.find(START_CODE)
    while i != -1:
        start = i + 3
        j = data.find(START_CODE, start)
        nal = data[start:] if j == -1 else data[start:j]
        # trailing zero bytes belong to the next 4-byte start code (or trailing_zero_8bits)
        nal = nal.rstrip(b"\x00")
        if nal:
            nals.append(nal)
        i = j
    return nals


def to_length_prefixed(nals: Iterable[bytes]) -> bytes:
    """Join NAL units with 4-byte big-endian lengths (the avcC / Matroska framing)."""
    return b"".join(len(n).to_bytes(4, "big") + n for n in nals)


def split_length_prefixed(data: bytes, length_size: int = 4) -> list[bytes]:
    """Split length-prefixed NAL units (avcC framing) back into NAL units."""
    nals: list[bytes] = []
    pos = 0
    while pos + length_size <= len(data):
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        nals.append(data[pos : pos + size])
        pos += size
    return nals


def to_annexb(nals: Iterable[bytes]) -> bytes:
    """Join NAL units with 4-byte start codes."""
    return b"".join(b"\x00\x00\x00\x01" + n for n in nals)


class _BitReader:
    """Reads bits and Exp-Golomb codes from an RBSP (emulation prevention removed)."""

    def __init__(self, rbsp: bytes) -> None:
        self._value = int.from_bytes(rbsp, "big")
        self._left = len(rbsp) * 8

    def u(self, n: int) -> int:
        if n > self._left:
            raise ValueError("SPS truncated")
        self._left -= n
        return (self._value >> self._left) & ((1 << n) - 1)

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            if zeros > 31:
                raise ValueError("bad Exp-Golomb code")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k % 2 else -(k // 2)


def _rbsp(nal: bytes) -> bytes:
    """Remove emulation prevention bytes (00 00 03 → 00 00)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


@dataclass(frozen=True, slots=True)
class SpsInfo:
    """What the recorder needs from a sequence parameter set (never from decoding)."""

    profile_idc: int
    constraint_flags: int
    level_idc: int
    chroma_format_idc: int
    bit_depth_luma: int
    bit_depth_chroma: int
    width: int
    height: int

    @property
    def codec_string(self) -> str:
        """RFC 6381 codec string, e.g. ``avc1.42e01f`` (HLS CODECS attribute)."""
        return f"avc1.{self.profile_idc:02x}{self.constraint_flags:02x}{self.level_idc:02x}"


def parse_sps(nal: bytes) -> SpsInfo:
    """Parse an SPS NAL unit (ITU-T H.264 7.3.2.1.1) for profile, level and picture size."""
    r = _BitReader(_rbsp(nal[1:]))
    profile = r.u(8)
    constraints = r.u(8)
    level = r.u(8)
    r.ue()  # seq_parameter_set_id
    chroma_format_idc, depth_luma, depth_chroma = 1, 8, 8
    if profile in HIGH_PROFILES:
        chroma_format_idc = r.ue()
        if chroma_format_idc == 3:
            r.u(1)  # separate_colour_plane_flag
        depth_luma = r.ue() + 8
        depth_chroma = r.ue() + 8
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.u(1):  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.u(1):
                    last, nxt = 8, 8
                    for _ in range(16 if i < 6 else 64):
                        if nxt != 0:
                            nxt = (last + r.se() + 256) % 256
                        last = nxt if nxt != 0 else last
    r.ue()  # log2_max_frame_num_minus4
    poc_type = r.ue()
    if poc_type == 0:
        r.ue()
    elif poc_type == 1:
        r.u(1)
        r.se()
        r.se()
        for _ in range(r.ue()):
            r.se()
    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    width_mbs = r.ue() + 1
    height_units = r.ue() + 1
    frame_mbs_only = r.u(1)
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag
    crop_l = crop_r = crop_t = crop_b = 0
    if r.u(1):
        crop_l, crop_r, crop_t, crop_b = r.ue(), r.ue(), r.ue(), r.ue()
    if chroma_format_idc == 1:
        cx, cy = 2, 2 * (2 - frame_mbs_only)
    elif chroma_format_idc == 2:
        cx, cy = 2, 2 - frame_mbs_only
    else:
        cx, cy = 1, 2 - frame_mbs_only
    width = width_mbs * 16 - cx * (crop_l + crop_r)
    height = (2 - frame_mbs_only) * height_units * 16 - cy * (crop_t + crop_b)
    return SpsInfo(
        profile, constraints, level, chroma_format_idc, depth_luma, depth_chroma, width, height
    )


def build_avcc(sps_list: Sequence[bytes], pps_list: Sequence[bytes]) -> bytes:
    """AVCDecoderConfigurationRecord (ISO/IEC 14496-15 5.3.3.1) with 4-byte NAL lengths."""
    if not sps_list or not pps_list:
        raise ValueError("avcC needs at least one SPS and one PPS")
    sps0 = sps_list[0]
    out = bytearray([1, sps0[1], sps0[2], sps0[3], 0xFC | 3, 0xE0 | len(sps_list)])
    for sps in sps_list:
        out += len(sps).to_bytes(2, "big") + sps
    out.append(len(pps_list))
    for pps in pps_list:
        out += len(pps).to_bytes(2, "big") + pps
    if sps0[1] in HIGH_PROFILES:
        info = parse_sps(sps0)
        out += bytes(
            [
                0xFC | info.chroma_format_idc,
                0xF8 | (info.bit_depth_luma - 8),
                0xF8 | (info.bit_depth_chroma - 8),
                0,
            ]
        )
    return bytes(out)


def is_keyframe(annexb: bytes) -> bool:
    """True when an Annex-B access unit contains an IDR slice."""
    i = annexb.find(START_CODE)
    while i != -1 and i + 3 < len(annexb):
        if nal_type(annexb[i + 3 :]) == NAL_IDR:
            return True
        i = annexb.find(START_CODE, i + 3)
    return False


def avcc_parameter_sets(avcc: bytes) -> bytes:
    """The SPS and PPS of an avcC as length-prefixed NAL units (4-byte lengths)."""
    nals: list[bytes] = []
    pos = 5
    for count_mask in (0x1F, 0xFF):
        count = avcc[pos] & count_mask
        pos += 1
        for _ in range(count):
            size = int.from_bytes(avcc[pos : pos + 2], "big")
            nals.append(avcc[pos + 2 : pos + 2 + size])
            pos += 2 + size
    return to_length_prefixed(nals)


def nal_types(sample: bytes) -> list[int]:
    """The NAL unit types in a length-prefixed access unit (for checks and tests)."""
    return [nal_type(n) for n in split_length_prefixed(sample) if n]


def sps_header(data: bytes) -> tuple[int, int, int] | None:
    """(profile_idc, constraint flags, level_idc) from avcC extradata or an Annex B
    bitstream containing an SPS; None if there is none."""
    if len(data) >= 4 and data[0] == 1:  # avcC: version, profile, compatibility, level
        return data[1], data[2], data[3]
    start = 0
    while True:
        found = data.find(START_CODE, start)
        if found < 0 or found + 6 >= len(data):
            return None
        if nal_type(data[found + 3 :]) == NAL_SPS:
            return data[found + 4], data[found + 5], data[found + 6]
        start = found + 3


def profile_name(profile_idc: int, constraints: int) -> str:
    """The H.264 profile name, e.g. "Constrained Baseline" for 66 with constraint_set1."""
    name = PROFILE_NAMES.get(profile_idc, f"profile_idc {profile_idc}")
    if profile_idc == 66 and constraints & CONSTRAINT_SET1:
        return "Constrained Baseline"
    return name
