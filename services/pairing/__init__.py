"""The pairing service: pairs devices over a PAKE (the protocol comes with its issue).
"""
