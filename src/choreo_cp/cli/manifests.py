"""Reading what ``cp apply -f`` is given: files, directories and stdin, YAML (one or more documents)
and JSON (an object, a list, or a ``kind: List``), into Environment and ChoreoApp manifests.

Input that cannot be read or understood is refused as a whole (:class:`ManifestError`, exit 2)
before anything is sent, so a typo in one file of a directory never leaves half of it applied.
YAML objects run together without ``---`` (what ``cat a.yaml b.yaml`` gives) are refused, not
split: a second ``apiVersion`` at the top of one document is named with its line, and the message
says to separate the documents or to pass the files themselves. Splitting would have to guess where
one object ends when its keys are in another order; a duplicate key anywhere is refused for the
same reason (YAML would silently keep the last value), as kubectl's strict decoding does.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from choreo_dp.api.vocabulary import API_VERSION

ENVIRONMENT = "Environment"
APP = "ChoreoApp"
KINDS = (ENVIRONMENT, APP)
SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
# keys that start every manifest: meeting one twice at the top of a document means two objects
_ROOT_KEYS = ("apiVersion", "kind", "metadata", "spec")


class ManifestError(Exception):
    """The input cannot be applied; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


@dataclass(frozen=True)
class Manifest:
    kind: str
    name: str
    environment: str  # an Environment's own name
    spec: dict[str, Any]
    namespace: str | None
    where: str  # "FILE document N", for messages

    @property
    def label(self) -> str:
        """kubectl's ``kind/name``, with the environment of an app: ``choreoapp/dev/orders``."""
        if self.kind == ENVIRONMENT:
            return f"environment/{self.name}"
        return f"choreoapp/{self.environment}/{self.name}"


# -- sources -------------------------------------------------------------------------------------
def sources(paths: Iterable[str], *, recursive: bool) -> Iterator[tuple[str, str]]:
    """(name, text) of every file to read: files as given, a directory's manifests in name order."""
    stdin_used = False
    for given in paths:
        if given == STDIN:
            if stdin_used:
                raise ManifestError(["-f - (stdin) given twice"])
            stdin_used = True
            yield "stdin", sys.stdin.read()
            continue
        path = Path(given)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files = sorted(p for p in path.glob(pattern) if p.is_file() and p.suffix in SUFFIXES)
            if not files:
                deep = " (or below it)" if recursive else " (use -R for its subdirectories)"
                raise ManifestError(
                    [f"-f {given}: no {', '.join('*' + s for s in SUFFIXES)} files in it{deep}"]
                )
            for file in files:
                yield str(file), _read(file)
        else:
            yield given, _read(path)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError([f"{path}: not UTF-8 text"]) from None
    except OSError as exc:
        raise ManifestError([f"-f {path}: {exc.strerror or exc}"]) from None


# -- parsing -------------------------------------------------------------------------------------
class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int, column: int) -> None:
        self.key, self.line, self.column = key, line, column


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader keeps the last of duplicate keys without a word; this one refuses them."""


def _strict_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[str] = set()
    for key_node, _ in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
            if key_node.value in seen:
                raise _DuplicateKey(key_node.value, key_node.start_mark.line + 1, key_node.start_mark.column)
            seen.add(key_node.value)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _strict_mapping)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _looks_like_json(source: str, text: str) -> bool:
    return source.endswith(".json") or text.lstrip().startswith(("{", "["))


def documents(source: str, text: str) -> list[tuple[str, Any]]:
    """The objects in one file as (where, object), lists and ``kind: List`` expanded."""
    if _looks_like_json(source, text):
        try:
            raw = [json.loads(text, object_pairs_hook=_json_pairs)]
        except json.JSONDecodeError as exc:
            raise ManifestError(
                [f"{source}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]
            ) from None
        except ValueError as exc:
            raise ManifestError([f"{source}: not valid JSON: {exc}"]) from None
    else:
        try:
            raw = [d for d in yaml.load_all(text, Loader=_StrictLoader) if d is not None]
        except _DuplicateKey as dup:
            raise ManifestError([_duplicate_message(source, dup)]) from None
        except yaml.YAMLError as exc:
            raise ManifestError([f"{source}: not valid YAML: {_yaml_problem(exc)}"]) from None
    out: list[tuple[str, Any]] = []
    for i, doc in enumerate(raw, 1):
        where = f"{source} document {i}" if len(raw) > 1 else source
        out.extend(_expand(where, doc))
    return out


def _duplicate_message(source: str, dup: _DuplicateKey) -> str:
    if dup.column == 0 and dup.key in _ROOT_KEYS:
        return (
            f"{source}: line {dup.line}: a second {dup.key!r} in one document: objects run together "
            "without '---' between them (as `cat a.yaml b.yaml` gives); separate them with a '---' line "
            "or pass the files or their directory with -f"
        )
    return f"{source}: line {dup.line}: duplicate key {dup.key!r} (YAML would keep only the last value)"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else problem


def _expand(where: str, doc: Any) -> list[tuple[str, Any]]:
    if isinstance(doc, list):
        return [(f"{where} item {i}", item) for i, item in enumerate(doc, 1)]
    if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
        return [(f"{where} item {i}", item) for i, item in enumerate(doc["items"], 1)]
    return [(where, doc)]


def manifest(where: str, doc: Any) -> Manifest:
    """One object checked for what the CLI needs to send it; the control plane checks the spec."""
    if not isinstance(doc, dict):
        raise ManifestError([f"{where}: expected an object (a mapping), got {type(doc).__name__}"])
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError([f"{where}: apiVersion must be {API_VERSION}, got {doc.get('apiVersion')!r}"])
    kind = doc.get("kind")
    if kind not in KINDS:
        raise ManifestError([f"{where}: kind must be Environment or ChoreoApp, got {kind!r}"])
    meta = doc.get("metadata")
    name = meta.get("name") if isinstance(meta, dict) else None
    if not isinstance(name, str) or not name:
        raise ManifestError([f"{where}: metadata.name is required"])
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    if namespace is not None and not isinstance(namespace, str):
        raise ManifestError([f"{where}: metadata.namespace must be a string"])
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        raise ManifestError([f"{where}: spec must be a mapping"])
    if kind == ENVIRONMENT:
        if namespace:
            raise ManifestError(
                [
                    f"{where}: Environment {name}: metadata.namespace {namespace!r}: an Environment is "
                    "cluster-scoped; its namespace is spec.namespace"
                ]
            )
        return Manifest(kind, name, name, spec, None, where)
    environment = spec.get("environment")
    if not isinstance(environment, str) or not environment:
        raise ManifestError([f"{where}: ChoreoApp {name}: spec.environment is required"])
    return Manifest(kind, name, environment, spec, namespace or None, where)


def load(paths: Iterable[str], *, recursive: bool = False) -> list[Manifest]:
    """Every manifest of the inputs, Environments first (their apps need them), else in input order.

    Raises :class:`ManifestError` with every problem found (one line each) when any input is wrong.
    """
    problems: list[str] = []
    found: list[Manifest] = []
    first_seen: dict[str, str] = {}
    for source, text in sources(paths, recursive=recursive):
        try:
            docs = documents(source, text)
        except ManifestError as exc:
            problems.extend(exc.problems)
            continue
        for where, doc in docs:
            try:
                item = manifest(where, doc)
            except ManifestError as exc:
                problems.extend(exc.problems)
                continue
            if item.label in first_seen:
                problems.append(f"{where}: {item.label} is already defined in {first_seen[item.label]}")
                continue
            first_seen[item.label] = where
            found.append(item)
    if not problems and not found:
        problems.append("no manifests found in the input")
    if problems:
        raise ManifestError(problems)
    return sorted(found, key=lambda m: 0 if m.kind == ENVIRONMENT else 1)
