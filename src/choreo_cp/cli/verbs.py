"""The shape of a ``cp`` verb, shared by the modules that register verbs.

A :data:`Command` gets the parsed arguments, a connected control-plane client and the URL, and
returns the exit code; ``cp_cmd``'s :data:`Handler` wraps it into an argparse handler that resolves
the connection settings and turns a failed request into one line on stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Command = Callable[[argparse.Namespace, Any, str], int]
Handler = Callable[[Command], Callable[[argparse.Namespace], int]]
