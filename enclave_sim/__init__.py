"""Software TPM/TEE simulator: test and demo hardware, never trusted by default."""
