"""The audit service: the tamper-evident, fail-closed audit log (Merkle tree, hash chain, signed
checkpoints in SQLCipher) with anomaly alerts. :mod:`.service` runs it; docs/security.md describes it.
"""
