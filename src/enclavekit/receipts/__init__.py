"""AIR v1 receipts: sign inside the enclave, verify anywhere (offline). Pure: no I/O, time passed in."""

from __future__ import annotations

from enclavekit.receipts.air import (
    AIR_V1_PROFILE,
    MAX_RECEIPT_SIZE,
    EnclaveMeasurements,
    MeasurementType,
    Receipt,
    ReceiptClaims,
    encode_claims,
    parse_receipt,
    sign_receipt,
    validate_claims,
)
from enclavekit.receipts.errors import ReceiptError

__all__ = [
    "AIR_V1_PROFILE",
    "MAX_RECEIPT_SIZE",
    "EnclaveMeasurements",
    "MeasurementType",
    "Receipt",
    "ReceiptClaims",
    "ReceiptError",
    "encode_claims",
    "parse_receipt",
    "sign_receipt",
    "validate_claims",
]
