"""The audit service: keeps the tamper-evident audit log (records and checkpoints come with the audit
issue).
"""
