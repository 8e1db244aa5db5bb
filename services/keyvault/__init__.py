"""The keyvault service: keeps the master key and releases purpose keys (its key hierarchy comes with
the keyvault issue).
"""
