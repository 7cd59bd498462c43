"""TDX quote layout: where a quote keeps its report_data, read without a quote library.

Intel TDX DCAP Quoting Library API, appendix A.3/A.4: a 48-byte header (version
u16 LE at 0, TEE type u32 LE at 4, 0x81 for TDX), then in v4 the TD report body,
in v5 a u16 body type (2 = TD 1.0, 3 = TD 1.5) and u32 body size before it. In
the body, report_data (64 bytes) follows tee_tcb_svn(16), mr_seam, mr_signer_seam
(48 each), seam/td attributes, xfam (8 each), mr_td, mr_config_id, mr_owner,
mr_owner_config (48 each) and rtmr0-3 (4 x 48): 520 bytes in.
"""

from __future__ import annotations

HEADER_SIZE = 48
TDX_TEE_TYPE = 0x81
REPORT_DATA_IN_BODY = 520
REPORT_DATA_SIZE = 64
V4_REPORT_DATA_OFFSET = HEADER_SIZE + REPORT_DATA_IN_BODY  # 568
V5_REPORT_DATA_OFFSET = HEADER_SIZE + 6 + REPORT_DATA_IN_BODY  # 574
_V5_TD_BODY_TYPES = (2, 3)


def quote_report_data(quote: bytes) -> bytes | None:
    """The report_data of a TDX v4/v5 quote; None for a layout not known here."""
    if len(quote) < HEADER_SIZE:
        raise ValueError("quote is shorter than its 48-byte header")
    version = int.from_bytes(quote[0:2], "little")
    tee_type = int.from_bytes(quote[4:8], "little")
    if tee_type != TDX_TEE_TYPE:
        return None
    if version == 4:
        start = V4_REPORT_DATA_OFFSET
    elif version == 5 and int.from_bytes(quote[48:50], "little") in _V5_TD_BODY_TYPES:
        start = V5_REPORT_DATA_OFFSET
    else:
        return None
    if len(quote) < start + REPORT_DATA_SIZE:
        raise ValueError("quote ends before its report_data")
    return quote[start : start + REPORT_DATA_SIZE]


def describe_quote(quote: bytes) -> str:
    version = int.from_bytes(quote[0:2], "little") if len(quote) >= 2 else -1
    tee_type = int.from_bytes(quote[4:8], "little") if len(quote) >= 8 else -1
    return f"version {version}, TEE type {tee_type:#x}"
