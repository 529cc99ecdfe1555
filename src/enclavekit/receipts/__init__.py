"""AIR v1 receipts: sign inside the enclave, verify anywhere (offline). Pure: no I/O, time passed in."""

from __future__ import annotations

from enclavekit.receipts.air import (
    AIR_V1_PROFILE,
    MAX_RECEIPT_SIZE,
    EnclaveMeasurements,
    MeasurementType,
    Receipt,
    ReceiptClaims,
    ReceiptSigner,
    encode_claims,
    parse_receipt,
    sign_receipt,
    validate_claims,
)
from enclavekit.receipts.errors import ReceiptError
from enclavekit.receipts.verification import (
    AttestationBinding,
    ReceiptPolicy,
    ReceiptReport,
    VerifiedReceipt,
    report_receipt,
    verify_receipt,
)

__all__ = [
    "AIR_V1_PROFILE",
    "MAX_RECEIPT_SIZE",
    "AttestationBinding",
    "EnclaveMeasurements",
    "MeasurementType",
    "Receipt",
    "ReceiptClaims",
    "ReceiptError",
    "ReceiptPolicy",
    "ReceiptReport",
    "ReceiptSigner",
    "VerifiedReceipt",
    "encode_claims",
    "parse_receipt",
    "report_receipt",
    "sign_receipt",
    "validate_claims",
    "verify_receipt",
]
