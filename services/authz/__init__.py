"""The authz service: Cedar policies, roles and consent grants deciding every access to a person's
data (docs/authz.md). :class:`~.service.Authz` is the service; the decision core (policies.py,
deciding.py, grants.py, authority.py) is plain functions and classes with no I/O."""
