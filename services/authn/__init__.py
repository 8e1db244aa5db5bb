"""The authn service: authenticates users and devices (accounts, tokens and MFA come with their issue).
"""
