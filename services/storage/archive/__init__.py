"""Backups: the archive format, and the backup, verify and restore jobs that use it.

- :mod:`.format`: what an archive is (header, key wraps, manifest, entry names, reader limits);
- :mod:`.writer`: writing one; :mod:`.reader`: verifying and extracting one, trusting nothing;
- :mod:`.backup`: snapshotting every store into a new archive;
- :mod:`.restore`: verifying an archive, and restoring one into an empty storage;
- :mod:`.lineage`: the backup lineage kept outside the home, for rollback detection;
- :mod:`.schema`: the wire messages of ``storage.backup.*`` and ``storage.jobs``.
"""
