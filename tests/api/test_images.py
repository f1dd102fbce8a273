"""Image references parsed like the container runtime, and allowlists on segment boundaries."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from choreo_dp.api.images import (
    IMAGE_PATTERN,
    ImageRef,
    InvalidImage,
    image_allowed,
    image_refusal,
    parse_allowed_prefix,
    parse_image,
    same_repository,
)

DIGEST = "sha256:" + "0123456789abcdef" * 4

# (input, registry, repository, tag, digest): what distribution/reference's
# ParseNormalizedNamed and containerd's ParseDockerRef make of them.
PARSED = [
    ("nginx", "docker.io", "library/nginx", None, None),
    ("nginx:1.25", "docker.io", "library/nginx", "1.25", None),
    ("library/nginx", "docker.io", "library/nginx", None, None),
    ("docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("index.docker.io/nginx", "docker.io", "library/nginx", None, None),
    ("acme/app", "docker.io", "acme/app", None, None),
    ("ghcr.io/acme/app:v1.2.3", "ghcr.io", "acme/app", "v1.2.3", None),
    ("ghcr.io/acme/team/app", "ghcr.io", "acme/team/app", None, None),
    ("localhost/app", "localhost", "app", None, None),
    ("localhost:5000/app:dev", "localhost:5000", "app", "dev", None),
    ("registry.example.com:443/a/b", "registry.example.com:443", "a/b", None, None),
    ("[::1]:5000/app", "[::1]:5000", "app", None, None),
    ("Registry.Example.com/app", "Registry.Example.com", "app", None, None),
    ("ghcr.io/acme/app@" + DIGEST, "ghcr.io", "acme/app", None, DIGEST),
    ("ghcr.io/acme/app:1@" + DIGEST, "ghcr.io", "acme/app", "1", DIGEST),
    ("a/b-c/d__e/f.g", "docker.io", "a/b-c/d__e/f.g", None, None),
    ("a/b---c", "docker.io", "a/b---c", None, None),
    ("ghcr.io/acme/app:" + "t" * 128, "ghcr.io", "acme/app", "t" * 128, None),
    ("ghcr.io/acme/app:_x", "ghcr.io", "acme/app", "_x", None),
]


@pytest.mark.parametrize(
    ("ref", "registry", "repository", "tag", "digest"), PARSED, ids=lambda v: str(v)[:40]
)
def test_references_parse_and_normalise_like_the_runtime(
    ref: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    got = parse_image(ref)
    assert got == ImageRef(registry, repository, tag, digest)
    assert re.fullmatch(IMAGE_PATTERN, ref)


def test_normalized_form_is_what_the_runtime_pulls() -> None:
    assert parse_image("nginx").normalized == "docker.io/library/nginx:latest"
    assert str(parse_image("nginx:1.25")) == "docker.io/library/nginx:1.25"
    assert parse_image("ghcr.io/a/b@" + DIGEST).normalized == "ghcr.io/a/b@" + DIGEST
    assert parse_image("ghcr.io/a/b:1@" + DIGEST).normalized == "ghcr.io/a/b:1@" + DIGEST
    assert parse_image("ghcr.io/a/b:1").name == "ghcr.io/a/b"


REFUSED = [
    ("", "empty"),
    ("docker.io/library/../../evil/x", "'..'"),
    ("ghcr.io/acme/./x", "'.'"),
    ("ghcr.io/acme//x", "empty"),
    ("ghcr.io/acme/x/", "empty"),
    ("/x", "empty"),
    ("ghcr.io/", "empty"),
    ("ghcr.io/Acme/x", "lowercase"),
    ("Nginx", "lowercase"),
    ("ghcr.io/acme/x y", "whitespace"),
    (" nginx", "whitespace"),
    ("nginx\n", "whitespace"),
    ("ghcr.io/acme/-x", "path segment"),
    ("ghcr.io/acme/x-", "path segment"),
    ("ghcr.io/acme/x...y", "path segment"),
    ("ghcr.io/acme/x___y", "path segment"),
    ("ghcr.io/acme/x:", "tag"),
    ("ghcr.io/acme/x:.v1", "tag"),
    ("ghcr.io/acme/x:-v1", "tag"),
    ("ghcr.io/acme/x:" + "t" * 129, "tag"),
    ("ghcr.io/acme/x:a/b", "path segment"),
    ("ghcr.io/acme/x@sha256:abc", "digest"),
    ("ghcr.io/acme/x@sha256:" + "A" * 64, "lowercase hex"),
    ("ghcr.io/acme/x@sha256:" + "a" * 63, "64 lowercase"),
    ("ghcr.io/acme/x@sha256:" + "a" * 65, "64 lowercase"),
    ("ghcr.io/acme/x@md5:" + "a" * 32, "unsupported digest"),
    ("ghcr.io/acme/x@" + "a" * 64, "not a digest"),
    ("ghcr.io/acme/x@", "not a digest"),
    ("-bad.example.com/x", "registry"),
    ("bad_host.example.com/x", "registry"),
    ("host.example.com:port/x", "registry"),
    ("0__0.0/x", "registry"),  # a first segment with a dot is a registry, and this one is not
    ("a" * 64, "64-digit hexadecimal"),
    ("ghcr.io/" + "a" * 250, "longer than 255"),
]


@pytest.mark.parametrize(("ref", "needle"), REFUSED, ids=lambda v: repr(v)[:40])
def test_malformed_references_are_refused_with_a_reason(ref: str, needle: str) -> None:
    with pytest.raises(InvalidImage) as info:
        parse_image(ref)
    assert needle in str(info.value)
    assert not image_allowed(ref, ["*"]), "even ['*'] admits only images"


def test_non_strings_are_refused() -> None:
    with pytest.raises(InvalidImage):
        parse_image(None)  # type: ignore[arg-type]


# (allowedPrefixes, image, admitted)
ALLOWLIST = [
    (["registry.example.com"], "registry.example.com/x", True),
    (["registry.example.com"], "registry.example.com/team/x:1", True),
    (["registry.example.com"], "registry.example.com.evil.io/x", False),
    (["registry.example.com/"], "registry.example.com.evil.io/x", False),
    (["registry.example.com"], "registry.example.com:5000/x", False),
    (["registry.example.com:5000"], "registry.example.com:5000/x", True),
    (["registry.example.com:5000"], "registry.example.com/x", False),
    (["REGISTRY.example.COM"], "registry.example.com/x", True),
    (["registry.example.com"], "Registry.Example.com/x", True),
    (["ghcr.io/acme/"], "ghcr.io/acme/x", True),
    (["ghcr.io/acme/"], "ghcr.io/acme/x/y:2", True),
    (["ghcr.io/acme/"], "ghcr.io/acmeevil/x", False),
    (["ghcr.io/acme/"], "ghcr.io/acme", False),
    (["ghcr.io/acme"], "ghcr.io/acme", True),
    (["ghcr.io/acme"], "ghcr.io/acme/x", True),
    (["ghcr.io/acme"], "ghcr.io/acme-evil/x", False),
    (["ghcr.io/acme/app"], "ghcr.io/acme/app:1", True),
    (["ghcr.io/acme/app"], "ghcr.io/acme/app2:1", False),
    (["ghcr.io/acme/"], "docker.io/evil/miner", False),
    (["ghcr.io/acme/"], "ghcr.io/acme/../evil/x", False),
    (["docker.io/library/"], "docker.io/library/../../evil/x", False),
    (["docker.io/library/"], "nginx", True),
    (["docker.io/library/"], "evil/nginx", False),
    (["docker.io/library/nginx"], "nginx:1.25", True),
    (["docker.io/library"], "nginx:1.25", True),
    (["docker.io/nginx"], "nginx:1.25", False),  # entries are literal: that is the user "nginx"
    (["docker.io/nginx/"], "nginx/app", True),
    (["index.docker.io/library/"], "nginx", True),
    (["docker.io"], "nginx", True),
    (["docker.io/acme/"], "acme/app", True),
    (["localhost:5000"], "localhost:5000/app", True),
    (["localhost"], "localhost:5000/app", False),
    ([], "nginx", False),
    ([], "ghcr.io/acme/x", False),
    (["*"], "anything.example/at/all:v1", True),
    (["*"], "docker.io/library/../../evil/x", False),
    (["ghcr.io/acme/", "registry.example.com"], "registry.example.com/x", True),
    (["not a prefix", "ghcr.io/acme/"], "ghcr.io/acme/x", True),
    (["not a prefix"], "ghcr.io/acme/x", False),
]


@pytest.mark.parametrize(("prefixes", "image", "admitted"), ALLOWLIST, ids=lambda v: str(v)[:40])
def test_allowlist_matches_on_registry_and_segment_boundaries(
    prefixes: list[str], image: str, admitted: bool
) -> None:
    assert image_allowed(image, prefixes) is admitted
    refusal = image_refusal(image, prefixes)
    assert (refusal is None) is admitted
    if refusal is not None:
        assert image in refusal and "\n" not in refusal


def test_refusal_reasons_say_what_to_do() -> None:
    empty = image_refusal("nginx", [])
    assert empty is not None and "admits no images" in empty and '["*"]' in empty
    outside = image_refusal("ghcr.io/acmeevil/x", ["ghcr.io/acme/"])
    assert outside is not None and "ghcr.io/acme/" in outside


BAD_PREFIXES = [
    ("", "empty"),
    ("acme/", "registry host"),
    ("nginx", "registry host"),
    ("ghcr.io/acme/*", "wildcard"),
    ("*.example.com", "wildcard"),
    ("ghcr.io/acme/app:1", "tag"),
    ("ghcr.io/acme/app@" + DIGEST, "digest"),
    ("ghcr.io/Acme/", "lowercase"),
    ("ghcr.io/acme/../", "'..'"),
    ("ghcr.io//acme", "empty"),
    ("ghcr.io /acme", "whitespace"),
    ("-ghcr.io/", "registry host"),
]


@pytest.mark.parametrize(("entry", "needle"), BAD_PREFIXES, ids=repr)
def test_malformed_allowlist_entries_are_refused(entry: str, needle: str) -> None:
    with pytest.raises(InvalidImage) as info:
        parse_allowed_prefix(entry)
    assert needle in str(info.value)


def test_allowlist_entries_parse() -> None:
    assert parse_allowed_prefix("*") is None
    p = parse_allowed_prefix("ghcr.io/acme/")
    assert p is not None and (p.registry, p.path, p.strictly_below) == ("ghcr.io", ("acme",), True)
    assert str(p) == "ghcr.io/acme/"
    p = parse_allowed_prefix("Index.Docker.io/library")
    assert p is not None and (p.registry, p.path) == ("docker.io", ("library",))
    p = parse_allowed_prefix("registry.example.com")
    assert p is not None and (p.registry, p.path, p.strictly_below) == ("registry.example.com", (), False)


def test_same_repository_compares_after_normalisation() -> None:
    assert same_repository("nginx", "docker.io/library/nginx:1.25")
    assert same_repository("ghcr.io/acme/x:1", "ghcr.io/acme/x@" + DIGEST)
    assert same_repository("GHCR.io/acme/x", "ghcr.io/acme/x")
    assert not same_repository("x/y:1", "ghcr.io/acme/backdoor@" + DIGEST)
    assert not same_repository("ghcr.io/acme/x", "ghcr.io/acme/x2")
    assert not same_repository("ghcr.io/acme/x", "ghcr.io/acme/x/y")
    assert not same_repository("docker.io/library/../x", "docker.io/x")


# -- properties ---------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]{1,4}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
_host_part = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_registry = st.one_of(
    st.none(),
    st.just("localhost"),
    st.lists(_host_part, min_size=2, max_size=3).map(".".join),
    st.builds(
        lambda h, p: f"{h}:{p}",
        st.lists(_host_part, min_size=1, max_size=3).map(".".join),
        st.integers(1, 65535),
    ),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_digest = st.sampled_from(["sha256", "sha384", "sha512"]).flatmap(
    lambda alg: st.text(
        "0123456789abcdef",
        min_size={"sha256": 64, "sha384": 96, "sha512": 128}[alg],
        max_size={"sha256": 64, "sha384": 96, "sha512": 128}[alg],
    ).map(lambda h: f"{alg}:{h}")
)


@st.composite
def references(draw: st.DrawFn) -> str:
    registry = draw(_registry)
    path = draw(st.lists(_component, min_size=1, max_size=4))
    if registry is None and len(path) > 1:
        # Without a registry a dotted first segment would be read as one.
        assume("." not in path[0] and path[0] != "localhost")
    ref = "/".join(([registry] if registry else []) + path)
    if draw(st.booleans()):
        ref += ":" + draw(_tag)
    if draw(st.booleans()):
        ref += "@" + draw(_digest)
    return ref


@given(references())
@settings(max_examples=400)
def test_grammar_references_parse_and_normalise_idempotently(ref: str) -> None:
    assume(not re.fullmatch(r"[a-f0-9]{64}", ref.split("@")[0].rsplit(":", 1)[0]))
    parsed = parse_image(ref)
    again = parse_image(parsed.normalized)
    assert again.normalized == parsed.normalized
    assert again.name == parsed.name and again.digest == parsed.digest
    assert parsed.tag == again.tag or (parsed.tag is None and parsed.digest is None and again.tag == "latest")
    assert same_repository(ref, parsed.normalized)
    assert re.fullmatch(IMAGE_PATTERN, ref) and re.fullmatch(IMAGE_PATTERN, parsed.normalized)
    assert ".." not in parsed.repository.split("/")


@given(st.text(alphabet=string.ascii_letters + string.digits + "./:@-_ [+]" + "é\n", max_size=80))
@settings(max_examples=600)
@example("docker.io/library/../../evil/x")
@example("ghcr.io/acme/%2e%2e/x")
def test_any_text_either_parses_to_a_valid_reference_or_is_refused(text: str) -> None:
    try:
        parsed = parse_image(text)
    except InvalidImage:
        return
    # The CRD's pattern admits everything the parser accepts (the parser is the stricter).
    assert re.fullmatch(IMAGE_PATTERN, text)
    assert all(seg not in ("", ".", "..") for seg in parsed.repository.split("/"))
    assert parsed.repository == parsed.repository.lower()
    assert parse_image(parsed.normalized).name == parsed.name


@given(references(), st.data())
@settings(max_examples=300)
def test_prefixes_built_from_an_image_admit_it_and_near_misses_do_not(ref: str, data: st.DataObject) -> None:
    assume(not re.fullmatch(r"[a-f0-9]{64}", ref.split("@")[0].rsplit(":", 1)[0]))
    image = parse_image(ref)
    segments = image.repository.split("/")
    k = data.draw(st.integers(0, len(segments)))
    prefix = "/".join([image.registry, *segments[:k]])
    assert image_allowed(ref, [prefix])
    if k < len(segments):
        assert image_allowed(ref, [prefix + "/"])
    else:
        assert not image_allowed(ref, [prefix + "/"]), "a trailing slash admits only what is below"
    # One more character on the last segment, or on the host, is someone else's.
    assert not image_allowed(ref, [prefix + "x"])
    assert not image_allowed(ref, [image.registry + "x"])
    if k:
        longer = "/".join([image.registry, *segments[: k - 1], segments[k - 1] + "evil"])
        assert not image_allowed(ref, [longer, longer + "/"])
    assert not image_allowed(ref, [])
    assert image_allowed(ref, ["*"])
