"""``choreo-dp sandbox keyvault``: the sandbox's Key Vault (``serve``, started by the sandbox) and
rotating one of its secrets (``set``)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

from choreo_dp.cli.common import OneLineParser, UsageError, add_verb, port


def register(verbs: Any) -> None:
    """Add ``keyvault`` under ``choreo-dp sandbox``'s sub-verbs."""
    k = add_verb(
        verbs,
        "keyvault",
        "the sandbox's local Key Vault: rotate a secret and watch the pods roll",
        "choreo-dp sandbox keyvault set payments-db-password 'n3w-pa55'",
        "echo -n 'n3w-pa55' | choreo-dp sandbox --dir /tmp/sb keyvault set payments-db-password -",
    )
    sub = k.add_subparsers(dest="keyvault_verb", metavar="VERB", parser_class=OneLineParser, required=True)
    s = add_verb(
        sub,
        "set",
        "add a new version of a secret in the running sandbox's vault (the operator picks it up "
        "within 10 s and the app's pods roll)",
        "choreo-dp sandbox keyvault set payments-db-password 'n3w-pa55'",
    )
    _dir_argument(s)
    s.add_argument("name", help="the secret's name in the vault (keyVaultSecret in a ChoreoApp)")
    s.add_argument("value", help="the new value; - reads it from stdin")
    s.set_defaults(handler=run_set)
    v = add_verb(
        sub,
        "serve",
        "serve the vault and the Entra ID token endpoint (the sandbox starts this itself)",
        "choreo-dp sandbox keyvault serve --dir .sandbox --vault-port 8443 --entra-port 8444",
    )
    _dir_argument(v)
    v.add_argument("--vault-port", type=port, required=True, help="the vault's port on 127.0.0.1")
    v.add_argument("--entra-port", type=port, required=True, help="the token endpoint's port on 127.0.0.1")
    v.set_defaults(handler=run_serve)


def _dir_argument(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: without the flag here, ``choreo-dp sandbox --dir D keyvault ...`` keeps D.
    parser.add_argument(
        "--dir",
        default=argparse.SUPPRESS,
        help="the sandbox's directory (default: sandbox's --dir, .sandbox)",
    )


def run_set(args: argparse.Namespace) -> int:
    from choreo_sandbox.keyvault.service import KeyVaultUnavailable, read_stdin_value, set_secret

    value = read_stdin_value() if args.value == "-" else args.value
    if not args.name.replace("-", "").isalnum() or len(args.name) > 127:
        raise UsageError(f"invalid secret name {args.name!r}: Key Vault allows 1-127 letters, digits and -")
    try:
        version = asyncio.run(set_secret(Path(args.dir).resolve(), args.name, value))
    except KeyVaultUnavailable as exc:
        sys.stderr.write(f"choreo-dp: error: {exc}\n")
        return 1
    print(f"secret {args.name!r} is now version {version}; apps reading it roll within about 10 s")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from choreo_sandbox.keyvault.service import serve_forever

    try:
        return asyncio.run(serve_forever(Path(args.dir).resolve(), args.vault_port, args.entra_port))
    except OSError as exc:
        raise UsageError(f"cannot serve the sandbox's Key Vault: {exc}") from None
