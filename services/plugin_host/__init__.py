"""The plugin-host service: runs signed plugins in sandboxes (loading and sandboxing come with their
issue).
"""
