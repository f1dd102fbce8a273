"""Container image references and registry allowlists.

An image string is parsed the way the container runtime parses it (the grammar of
github.com/distribution/reference, normalised like containerd's ``ParseDockerRef``), so the
allowlist judges the image the kubelet will actually pull, not a string that merely looks
like it. ``nginx`` is ``docker.io/library/nginx:latest``; ``ghcr.io/acme/../evil`` is not an
image at all.

Allowlist entries (``Environment.spec.registry.allowedPrefixes``) name a registry and,
optionally, a repository path; they match on registry and path-segment boundaries, never as
plain string prefixes:

* ``registry.example.com`` admits ``registry.example.com/x`` but not
  ``registry.example.com.evil.io/x`` nor ``registry.example.com:5000/x``;
* ``ghcr.io/acme/`` admits ``ghcr.io/acme/x`` and ``ghcr.io/acme/x/y`` but not
  ``ghcr.io/acmeevil/x`` nor the repository ``ghcr.io/acme`` itself;
* ``ghcr.io/acme/app`` admits the repository ``ghcr.io/acme/app`` and anything below it;
* ``docker.io/library/`` admits ``nginx`` (which is ``docker.io/library/nginx``): images are
  normalised, entries are taken literally apart from ``index.docker.io`` being ``docker.io``;
* ``*`` admits any valid image; an empty list admits none.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_REGISTRY = "docker.io"
LEGACY_DEFAULT_REGISTRY = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
ANY_IMAGE = "*"
NAME_TOTAL_LENGTH_MAX = 255

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_HOST = rf"(?:{_DOMAIN_NAME}|{_IPV6})"
_DOMAIN = rf"{_HOST}(?::[0-9]+)?"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]{32,})"
_DOMAIN_RE = re.compile(_DOMAIN)
_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT)
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
# distribution/reference's anchored ReferenceRegexp, for the CRD: the apiserver (RE2) refuses
# what is not a reference at all. Digest algorithms and lengths, the 255-character name limit
# and Docker Hub normalisation are left to parse_image.
IMAGE_PATTERN = (
    rf"^(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*(?::{_TAG})?"
    r"(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
_HEX64_RE = re.compile(r"[a-f0-9]{64}")
# go-digest's registered algorithms and the exact length of their (lowercase) hex encoding.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}


class InvalidImage(ValueError):
    """Not an image reference a container runtime would pull, or not an allowlist entry."""


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A parsed, normalised image reference."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """``registry/repository``: what an allowlist and a promotion compare."""
        return f"{self.registry}/{self.repository}"

    @property
    def normalized(self) -> str:
        """The reference as the runtime pulls it (``latest`` when neither tag nor digest)."""
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        elif self.digest is None:
            out += f":{DEFAULT_TAG}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def __str__(self) -> str:
        return self.normalized


def _is_domain(first: str) -> bool:
    # distribution/reference's splitDockerDomain: the first component is a registry only if
    # it looks like a host (has a dot or a port, or is localhost) or has uppercase letters
    # (which a repository path cannot).
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


def _split_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if sep and _is_domain(first):
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_REGISTRY, name
    if domain == LEGACY_DEFAULT_REGISTRY:
        domain = DEFAULT_REGISTRY
    if domain == DEFAULT_REGISTRY and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder
    return domain, remainder


def _check_domain(domain: str, ref: str) -> None:
    if not _DOMAIN_RE.fullmatch(domain):
        raise InvalidImage(f"image {ref!r}: {domain!r} is not a valid registry host[:port]")


def _check_path(path: str, ref: str) -> None:
    if not path:
        raise InvalidImage(f"image {ref!r}: the repository name is empty")
    if path.lower() != path:
        raise InvalidImage(f"image {ref!r}: the repository name must be lowercase")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidImage(f"image {ref!r}: empty, '.' or '..' path segment in the repository name")
        if not _PATH_COMPONENT_RE.fullmatch(segment):
            raise InvalidImage(
                f"image {ref!r}: path segment {segment!r} must be lowercase letters and digits "
                "separated by '.', '_', '__' or dashes"
            )


def _check_digest(digest: str, ref: str) -> None:
    m = _DIGEST_RE.fullmatch(digest)
    if m is None:
        raise InvalidImage(f"image {ref!r}: {digest!r} is not a digest (algorithm:hex)")
    algorithm, encoded = m.groups()
    expected = _DIGEST_HEX_LENGTH.get(algorithm)
    if expected is None:
        raise InvalidImage(f"image {ref!r}: unsupported digest algorithm {algorithm!r}")
    if len(encoded) != expected or encoded.lower() != encoded:
        raise InvalidImage(f"image {ref!r}: a {algorithm} digest is {expected} lowercase hex digits")


def parse_image(ref: str) -> ImageRef:
    """Parse and normalise ``[registry/]repository[:tag][@digest]``; raise :class:`InvalidImage`."""
    if not isinstance(ref, str):
        raise InvalidImage(f"an image reference is a string, not {type(ref).__name__}")
    if not ref:
        raise InvalidImage("the image reference is empty")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise InvalidImage(f"image {ref!r}: whitespace is not allowed")
    rest, at, digest = ref.partition("@")
    if at:
        _check_digest(digest, ref)
    # A colon after the last slash separates the tag; a colon before it is a registry port.
    tag: str | None = None
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise InvalidImage(
                f"image {ref!r}: tag {tag!r} must be 1-128 of letters, digits, '_', '.', '-' "
                "and not start with '.' or '-'"
            )
    if not rest:
        raise InvalidImage(f"image {ref!r}: the repository name is empty")
    if len(rest) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidImage(f"image {ref!r}: the name is longer than {NAME_TOTAL_LENGTH_MAX} characters")
    if _HEX64_RE.fullmatch(rest):
        raise InvalidImage(f"image {ref!r}: a repository name cannot be a 64-digit hexadecimal string")
    domain, path = _split_domain(rest)
    _check_domain(domain, ref)
    _check_path(path, ref)
    return ImageRef(registry=domain, repository=path, tag=tag, digest=digest if at else None)


@dataclass(frozen=True, slots=True)
class AllowedPrefix:
    """A parsed allowlist entry: a registry and a (possibly empty) repository path."""

    registry: str
    path: tuple[str, ...]
    # ``ghcr.io/acme/`` covers what is below acme; ``ghcr.io/acme`` covers acme itself too.
    strictly_below: bool

    def admits(self, image: ImageRef) -> bool:
        if image.registry.lower() != self.registry:
            return False
        segments = tuple(image.repository.split("/"))
        if segments[: len(self.path)] != self.path:
            return False
        return not (self.strictly_below and len(segments) == len(self.path))

    def __str__(self) -> str:
        out = "/".join((self.registry, *self.path))
        return out + "/" if self.strictly_below and self.path else out


def parse_allowed_prefix(entry: str) -> AllowedPrefix | None:
    """Parse an allowlist entry; ``None`` for ``*``. Raise :class:`InvalidImage` if malformed."""
    if entry == ANY_IMAGE:
        return None
    if not entry or entry != entry.strip() or any(c.isspace() for c in entry):
        raise InvalidImage(f"allowed prefix {entry!r}: empty or contains whitespace")
    if "*" in entry:
        raise InvalidImage(f"allowed prefix {entry!r}: the only wildcard is '*' on its own")
    if "@" in entry:
        raise InvalidImage(f"allowed prefix {entry!r}: names a registry or repository, not a digest")
    domain, _, path = entry.partition("/")
    if not _is_domain(domain) or not _DOMAIN_RE.fullmatch(domain):
        raise InvalidImage(
            f"allowed prefix {entry!r} must start with a registry host such as docker.io or "
            "registry.example.com:5000"
        )
    if ":" in path:
        raise InvalidImage(f"allowed prefix {entry!r}: names a registry or repository, not a tag")
    strictly_below = path.endswith("/")
    path = path.rstrip("/") if strictly_below else path
    registry = domain.lower()
    if registry == LEGACY_DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    # The path is taken literally: Docker Hub's shorthand (nginx = library/nginx) is for
    # images, and would make docker.io/library mean docker.io/library/library.
    if path:
        _check_path(path, entry)
    return AllowedPrefix(
        registry=registry, path=tuple(path.split("/")) if path else (), strictly_below=strictly_below
    )


def validate_allowed_prefix(entry: str) -> str:
    """The entry unchanged if it is valid; raise :class:`InvalidImage` otherwise."""
    parse_allowed_prefix(entry)
    return entry


def image_refusal(ref: str, allowed_prefixes: Sequence[str]) -> str | None:
    """``None`` if the allowlist admits the image, else a one-line reason."""
    try:
        image = parse_image(ref)
    except InvalidImage as exc:
        return str(exc)
    if not allowed_prefixes:
        return (
            f"image {ref!r} is not allowed: registry.allowedPrefixes is empty, which admits no images "
            '(use ["*"] to admit any)'
        )
    for entry in allowed_prefixes:
        try:
            prefix = parse_allowed_prefix(entry)
        except InvalidImage:
            # A malformed entry admits nothing; the others still count.
            continue
        if prefix is None or prefix.admits(image):
            return None
    return (
        f"image {ref!r} ({image.name}) is not under any of registry.allowedPrefixes: "
        f"{', '.join(allowed_prefixes)}"
    )


def image_allowed(ref: str, allowed_prefixes: Sequence[str]) -> bool:
    return image_refusal(ref, allowed_prefixes) is None


def same_repository(a: str, b: str) -> bool:
    """True if both references name the same registry/repository after normalisation."""
    try:
        ra, rb = parse_image(a), parse_image(b)
    except InvalidImage:
        return False
    return ra.registry.lower() == rb.registry.lower() and ra.repository == rb.repository
