"""The files engine: files of any size, one encrypted blob per file, uploaded and read in pieces.

- :mod:`.store`: :class:`~.store.FileStore`, the store's rules (names, uploads, key versions);
- :mod:`.blobs`: the on-disk blob format and the durable steps that install or remove a blob;
- :mod:`.engine`: the ``storage.files.*`` requests, and the uploads open between them;
- :mod:`.schema`: their wire messages.

The content of a blob is a STREAM (:mod:`..core.stream`), the format backup archives use too.
"""
