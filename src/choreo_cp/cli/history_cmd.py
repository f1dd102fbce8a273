"""``cp history APP`` and ``cp rollback APP``: an app's accepted specs, and pushing one again.

A rollback is a new revision carrying an earlier spec (pinned to the digest that ran it when the
data plane reported one); the control plane judges it as it judges a PUT, so a refusal is the same
one line as ``cp apply``'s.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from choreo_cp.cli import views
from choreo_cp.cli.verbs import Handler
from choreo_dp.cli.common import add_verb

HEADERS = ("REVISION", "AGE", "AUTHOR", "DIGEST", "IMAGE")
# sha256: and 12 hex digits, as `docker images` shortens ids: enough to tell revisions apart
DIGEST_SHOWN = len("sha256:") + 12


def register(
    verbs: Any,
    handler: Handler,
    app_target: Callable[[argparse.ArgumentParser], None],
    client_args: Callable[[argparse.ArgumentParser], None],
) -> None:
    h = add_verb(
        verbs,
        "history",
        "list every accepted spec of an app, newest first: revision, age, author, digest that ran",
        "choreo-dp cp history orders --environment dev --dataplane edge-1",
        "choreo-dp cp history orders --environment dev --dataplane edge-1 -o yaml",
    )
    app_target(h)
    h.add_argument(
        "-o", "--output", choices=["table", "json", "yaml"], default="table",
        help="table (default), json or yaml (with each revision's spec)",
    )  # fmt: skip
    client_args(h)
    h.set_defaults(handler=handler(history))

    r = add_verb(
        verbs,
        "rollback",
        "push an earlier spec of an app again as a new revision (pinned to the digest that ran it)",
        "choreo-dp cp rollback orders --environment dev --dataplane edge-1            # one step back",
        "choreo-dp cp rollback orders --environment dev --dataplane edge-1 --to-revision 12",
    )
    app_target(r)
    which = r.add_mutually_exclusive_group()
    which.add_argument("--to-revision", type=_positive, metavar="N", help="the revision to push again")
    which.add_argument(
        "--steps", type=_positive, metavar="K", help="how many entries back in the history (default 1)"
    )
    client_args(r)
    r.set_defaults(handler=handler(rollback))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}: at least 1")
    return value


def short_digest(digest: Any) -> str | None:
    return digest[:DIGEST_SHOWN] if isinstance(digest, str) else None


def history_rows(items: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for item in items:
        author = item.get("author")
        if item.get("cause") == "rollback" and item.get("rollbackOf") is not None:
            author = f"{author or '?'} (rollback to {item['rollbackOf']})"
        elif item.get("cause") == "promotion":
            author = f"{author or '?'} (promotion)"
        rows.append(
            [item.get("revision"), views.age_since(item.get("at")), author, short_digest(item.get("digest")),
             item.get("image")]
        )  # fmt: skip
    return rows


def history(args: argparse.Namespace, client: Any, url: str) -> int:
    body = client.app_history(args.dataplane, args.environment, args.app)
    if args.output == "json":
        print(json.dumps(body, indent=2))
        return 0
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump(body, sort_keys=False), end="")
        return 0
    items = [i for i in views.mapping(body).get("items") or [] if isinstance(i, dict)]
    print(views.table(HEADERS, history_rows(items)))
    return 0


def rollback(args: argparse.Namespace, client: Any, url: str) -> int:
    result = client.rollback_app(
        args.dataplane, args.environment, args.app, revision=args.to_revision, steps=args.steps
    )
    what = f"choreoapp/{args.environment}/{args.app}"
    target = result.get("rolledBackTo")
    image = result.get("image")
    if not result.get("changed"):
        print(f"{what} unchanged (revision {target}'s spec is the desired one; image {image})")
        return 0
    pinned = " (pinned to the digest that ran it)" if result.get("pinned") else ""
    print(
        f"{what} rolled back to revision {target}'s spec as revision {result.get('objectRevision')}: "
        f"image {image}{pinned}"
    )
    return 0
