"""meshctl: the operator's tool for a curvemesh mesh (``tools/meshctl`` in a checkout,
the ``meshctl`` console script when installed). ``meshctl --help`` lists the commands.

meshctl drives supervisord over its unix socket (XML-RPC, with the credentials
``meshctl init`` generated) and talks to the mesh as a peer with its own
operator certificate; it has no other control path.
"""

from ._cli import main

__all__ = ["main"]
