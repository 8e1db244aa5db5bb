"""The supervisor-events listener: forwards supervisord's process state changes into the mesh.

Run by supervisord as an ``[eventlistener]`` (see supervisord.conf); events
are published on topics under ``supervisor.`` (``supervisor.process.fatal``,
``supervisor.process.exited``, ...), see :mod:`.forwarder`.
"""
