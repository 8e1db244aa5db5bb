"""The plugin-host service: signed, capability-scoped plugins, each in a kernel-sandboxed child
process (docs/plugins.md). :mod:`.service` is the service, :mod:`.sandbox` the sandbox."""
