"""What meshctl adds to its parser once it is built: ``--version``, ``meshctl completion SHELL``,
and shell completion (bash, zsh) through argcomplete.

argcomplete is imported only when a shell asks for completions (``_ARGCOMPLETE`` in the
environment) or for the script to source, so an ordinary run never pays for it. The shell runs
meshctl itself for every completion, so the answers come from the same parser: commands and
choices (actions, purposes, roles) from the argument definitions, and the values below from the
home, read without a mesh and without importing zmq: declared service names from the layered
configuration (and, as ``service:<name>``, the principals of ``roles`` and ``policy test``),
certificate names from ``certs/allowed/``, data categories from the policy directory's
``categories.toml``. Completers are attached by walking the
built parser and finding arguments by command and ``dest``, so the argument definitions stay as
they are.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

from ._version import VersionAction

SHELLS: Final = ("bash", "zsh")
#: The names the completion script is registered for: the installed console script.
PROGRAMS: Final = ("meshctl",)

Completer = Callable[..., Iterable[str]]


def _home(parsed_args: argparse.Namespace) -> Path | None:
    """The home the command line names (``--home``, else ``$CURVEMESH_HOME``), or None."""
    from shared import ENV_HOME

    value = getattr(parsed_args, "home", None) or os.environ.get(ENV_HOME)
    return Path(value).absolute() if value else None


def _services(parsed_args: argparse.Namespace) -> list[str]:
    """The declared services of the home's layered configuration (the project's mesh.toml when the
    home has none); nothing when the configuration cannot be read (a completion never fails)."""
    from shared import ConfigError, mesh_config

    try:
        return sorted(mesh_config(_home(parsed_args)).services)
    except (ConfigError, OSError, ValueError):
        return []


def services(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: a process of the mesh (the broker is one too)."""
    return sorted({"broker", *_services(parsed_args)})


def ping_targets(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: ``ping``'s SERVICE, or ``mesh`` for the broker itself."""
    return ["mesh", *_services(parsed_args)]


def declared(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: ``service remove NAME`` (a declared service)."""
    return _services(parsed_args)


def cert_names(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: a certificate REF by name, from ``<home>/certs/allowed/<name>.key``."""
    home = _home(parsed_args)
    if home is None:
        return []
    try:
        return sorted(p.stem for p in (home / "certs" / "allowed").glob("*.key"))
    except OSError:
        return []


# roles and policy take several optional operands in a row, and argcomplete offers every one that
# could come next; each completer below answers only in its own place (after the operands before
# it), so `policy test ` offers principals alone and `policy validate ` leaves the DIR to the shell.

def principals(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: an authz principal, ``service:<name>`` for each declared service (``roles``, and
    ``policy test``'s PRINCIPAL)."""
    if parsed_args.command == "policy" and parsed_args.action != "test":
        return []
    return [f"service:{name}" for name in _services(parsed_args)]


def roles(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: ``roles assign|revoke PRINCIPAL ROLE``'s ROLE, one of the built-in roles."""
    return ["user-data", "system", "plugin"] if parsed_args.principal and parsed_args.action != "list" else []


def verbs(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: ``policy test PRINCIPAL ACTION``'s ACTION."""
    return ["read", "write", "delete"] if parsed_args.action == "test" and parsed_args.subject else []


def categories(parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """Completer: a data category, from categories.toml of the configured policy directory (the one
    shipped with authz when ``[authz] policy_dir`` is empty), read without importing authz."""
    import tomllib

    from shared import ConfigError, mesh_config

    if parsed_args.command == "policy" and not parsed_args.verb:
        return []  # policy test's CATEGORY comes after its ACTION
    home = _home(parsed_args)
    try:
        configured = mesh_config(home).authz.policy_dir
        shipped = Path(__file__).resolve().parents[2] / "services" / "authz" / "policy"
        directory = (home / configured) if configured and home is not None else shipped
        with (directory / "categories.toml").open("rb") as source:
            return sorted(tomllib.load(source).get("categories", {}))
    except (ConfigError, OSError, ValueError, AttributeError):
        return []


#: (command, dest) -> completer. Purposes, actions and roles are argument choices: argcomplete
#: offers those by itself.
COMPLETERS: Final[dict[tuple[str, str], Completer]] = {
    ("restart", "service"): services, ("logs", "service"): services, ("ping", "service"): ping_targets,
    ("service", "name"): declared, ("certs", "ref"): cert_names, ("roles", "principal"): principals,
    ("roles", "role"): roles, ("policy", "subject"): principals, ("policy", "verb"): verbs,
    ("policy", "category"): categories, ("consent", "categories"): categories,
}


def _subcommands(top: argparse.ArgumentParser) -> argparse._SubParsersAction[Any]:
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise LookupError("meshctl's parser has no commands")


def attach(top: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``--version`` and the ``completion`` command to the built parser, set each completer,
    and answer the shell if it is asking (argcomplete then exits); return the parser."""
    top.add_argument("--version", action=VersionAction, help="print meshctl's version and exit")
    commands = _subcommands(top)
    text = "print the shell code that completes meshctl's commands and arguments (source it: see README)"
    completion = commands.add_parser("completion", help=text, description=text)
    completion.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    for command, parser in commands.choices.items():
        for action in parser._actions:
            completer = COMPLETERS.get((command, action.dest))
            if completer is not None:
                action.completer = completer  # type: ignore[attr-defined]  # argcomplete reads it
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete

        # The default finder would also offer "-h"-style options before a word is typed; like
        # git, complete options only once the word starts with "-".
        argcomplete.autocomplete(top, always_complete_options=False)
    return top


def script(shell: str) -> str:
    """The code to source in ``shell`` so that it completes meshctl."""
    import argcomplete

    return argcomplete.shellcode(list(PROGRAMS), shell=shell)
