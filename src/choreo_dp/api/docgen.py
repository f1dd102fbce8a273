"""Markdown reference of the custom resources, generated from the same schemas as the CRDs."""

from __future__ import annotations

from typing import Any

from choreo_dp.api.crdgen import RESOURCES, crd_for


def _type_of(node: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    t = str(node.get("type", "any"))
    if t == "array":
        return f"[{_type_of(node.get('items', {}))}]"
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    return t


def _constraints(node: dict[str, Any]) -> str:
    parts = []
    for key in ("minimum", "maximum", "minLength", "maxLength", "maxItems", "pattern", "format"):
        if key in node:
            parts.append(f"{key} `{node[key]}`")
    if "default" in node:
        parts.append(f"default `{node['default']}`")
    return ", ".join(parts).replace("|", "\\|")


def _rows(node: dict[str, Any], prefix: str, required: set[str]) -> list[str]:
    rows = []
    for name, sub in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        desc = str(sub.get("description", "")).replace("\n", " ")
        req = "yes" if name in required else ""
        rows.append(f"| `{path}` | {_type_of(sub)} | {req} | {_constraints(sub)} | {desc} |")
        child = sub.get("items", sub) if sub.get("type") == "array" else sub
        if child.get("properties"):
            rows += _rows(
                child, path + ("[]" if sub.get("type") == "array" else ""), set(child.get("required", []))
            )
    return rows


def render_markdown() -> str:
    out = [
        "# CRD reference",
        "",
        "Generated from `choreo_dp.api` by `python -m choreo_dp.api.docgen`; do not edit.",
        "",
    ]
    for model in RESOURCES:
        crd = crd_for(model)
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        info = model.crd
        out += [
            f"## {info.kind} (`{crd['spec']['group']}/{version['name']}`)",
            "",
            info.description,
            "",
            f"Scope `{info.scope}`, plural `{info.plural}`, short names {', '.join(f'`{s}`' for s in info.short_names)}, "
            f"categories {', '.join(f'`{c}`' for c in info.categories)}.",
            "",
            "Printer columns: "
            + ", ".join(
                f"`{c['name'].upper()}` (`{c['jsonPath']}`)" for c in version["additionalPrinterColumns"]
            ),
            "",
        ]
        for part in ("spec", "status"):
            sub = schema["properties"][part]
            out += [
                f"### {part}",
                "",
                "| field | type | required | constraints | description |",
                "|---|---|---|---|---|",
            ]
            out += _rows(sub, "", set(sub.get("required", [])))
            out.append("")
        rules = schema["properties"]["spec"].get("x-kubernetes-validations", [])
        if rules:
            out += ["Cross-field rules (CEL): " + "; ".join(r["message"] for r in rules) + ".", ""]
    return "\n".join(out)


if __name__ == "__main__":
    import sys
    from pathlib import Path

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("docs/crds.md")
    target.write_text(render_markdown())
