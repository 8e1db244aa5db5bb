"""The authn service: people's accounts, passwords, TOTP and passkeys, sessions and device-bound
access tokens (docs/authn.md). :class:`~.service.Authn` is the service."""
