"""The pairing service: devices join over a PAKE, and operators manage them (docs/pairing.md)."""
