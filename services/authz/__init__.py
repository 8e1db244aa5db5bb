"""The authz service: decides user- and plugin-level access (RBAC, ABAC and consent come with their
issue).
"""
