"""``choreo-dp crds --output-dir DIR``: write the CRDs generated from the models."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from choreo_dp.api.crdgen import all_crds, render_yaml
from choreo_dp.cli.common import UsageError, add_verb


def register(sub: Any) -> None:
    p = add_verb(
        sub,
        "crds",
        "write the CRD YAML generated from the pydantic models",
        "choreo-dp crds --output-dir crds/ && kubectl apply -f crds/",
    )
    p.add_argument("--output-dir", required=True, help="directory to write one YAML per CRD into")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    out = Path(args.output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, crd in all_crds().items():
            (out / name).write_text(render_yaml(crd))
            print(out / name)
    except OSError as exc:
        raise UsageError(f"--output-dir {out}: {exc.strerror or exc}") from None
    return 0
