import pytest

from chaser import errors
from chaser.images.reference import DEFAULT_IMAGE, is_default, normalize, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("ref,expected", [
    ("python:3.12", "docker.io/library/python:3.12"),
    ("python", "docker.io/library/python:latest"),
    ("docker://python", "docker.io/library/python:latest"),
    ("library/python:3", "docker.io/library/python:3"),
    ("index.docker.io/library/python:3", "docker.io/library/python:3"),
    ("user/repo", "docker.io/user/repo:latest"),
    ("ghcr.io/owner/repo/sub:v1.2_3", "ghcr.io/owner/repo/sub:v1.2_3"),
    ("localhost/x", "localhost/x:latest"),
    ("localhost:5000/x:tag", "localhost:5000/x:tag"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest"),
    (f"python@{DIGEST}", f"docker.io/library/python@{DIGEST}"),
    (f"python:3.12@{DIGEST}", f"docker.io/library/python:3.12@{DIGEST}"),
    ("my-registry.example.com:443/team/app:1", "my-registry.example.com:443/team/app:1"),
])
def test_normalise(ref, expected):
    assert parse(ref).normalized() == expected


def test_parts_and_skopeo_form():
    r = parse(f"quay.io/a/b:1@{DIGEST}")
    assert (r.transport, r.domain, r.path, r.tag, r.digest) == ("docker", "quay.io", "a/b", "1", DIGEST)
    assert r.skopeo() == f"docker://quay.io/a/b@{DIGEST}"  # the digest pins it
    assert parse("python:3").skopeo() == "docker://docker.io/library/python:3"
    assert r.with_digest("sha256:" + "c" * 64) == "docker://quay.io/a/b@sha256:" + "c" * 64


@pytest.mark.parametrize("ref", [
    "UPPER/case", "foo:bad tag", "foo:-x", "name@sha256:1234", "name@md5:" + "a" * 32, "a//b",
    "http://x/y", ":tag", "x/", "a b", "-lead", "foo::bar", "x" * 300, "ex ample.com/x", "foo\nbar",
    "oci:", "oci-archive::tag",
])
def test_invalid(ref):
    with pytest.raises(errors.InvalidImage) as ei:
        parse(ref)
    assert ei.value.status == 400 and ei.value.code == "invalid_image"


def test_local_transports(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = parse("oci:layout:v1")
    assert (r.transport, r.path, r.tag, r.is_local) == ("oci", str(tmp_path / "layout"), "v1", True)
    assert r.normalized() == f"oci:{tmp_path}/layout:v1" == r.skopeo()
    assert parse("oci-archive:/x/img.tar").normalized() == "oci-archive:/x/img.tar"
    d = parse("docker-archive:/x/d.tar:example.com/feat:v1")
    assert d.tag == "example.com/feat:v1" and d.skopeo() == "docker-archive:/x/d.tar:example.com/feat:v1"
    with pytest.raises(errors.InvalidImage):
        parse("docker-archive:/x/d.tar:BAD REF")


def test_default_aliases():
    for ref in (None, "", "  ", "chaser/base", "chaser/base:latest"):
        assert is_default(ref) and normalize(ref) == DEFAULT_IMAGE
    assert not is_default("chaser/other")
