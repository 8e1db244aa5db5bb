"""The keyvault service: the master key (Argon2id, platform keyring) and the wrapped purpose keys it
releases to entitled identities; sealing, unlock, sessions, password change and rotation.
:mod:`.service` runs it; docs/security.md describes it.
"""
