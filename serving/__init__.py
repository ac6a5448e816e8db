"""The prediction server: attested serving with inference receipts and DAWN."""
