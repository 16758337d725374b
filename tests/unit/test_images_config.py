import pytest

from chaser import errors
from chaser.images.config import ImageConfig, image_config, parse_env
from chaser.images.pull import check_manifest, check_platform, choose_platform, classify, is_index, tail


def test_image_config_fields():
    cfg = image_config({"config": {"Env": ["A=1", "B=x=y", "NOVALUE", "A=2", "=bad"], "WorkingDir": "/srv",
                                   "User": "app:staff", "Entrypoint": ["/x"], "Cmd": ["y"]}})
    assert cfg == ImageConfig(env={"A": "2", "B": "x=y"}, workdir="/srv", user="app:staff")
    assert cfg.to_dict() == {"env": {"A": "2", "B": "x=y"}, "workdir": "/srv", "user": "app:staff"}


def test_image_config_defaults_and_relative_workdir():
    assert image_config({}) == ImageConfig(env={}, workdir=None, user=None)
    assert image_config({"config": {"WorkingDir": "", "User": ""}}) == ImageConfig()
    assert image_config({"config": {"WorkingDir": "app"}}).workdir == "/app"


@pytest.mark.parametrize("bad", [[], {"config": ["x"]}, {"config": {"Env": "A=1"}}, {"config": {"Env": [1]}},
                                 {"config": {"User": 5}}, {"config": {"WorkingDir": ["/x"]}}])
def test_image_config_rejects_garbage(bad):
    with pytest.raises(errors.InvalidImage):
        image_config(bad)


def test_parse_env_empty():
    assert parse_env(None) == {} and parse_env([]) == {}


def _manifest(*sizes, media="application/vnd.oci.image.layer.v1.tar+gzip"):
    return {"schemaVersion": 2, "config": {"digest": "sha256:" + "0" * 64, "size": 10},
            "layers": [{"mediaType": media, "digest": "sha256:" + "1" * 64, "size": s} for s in sizes]}


def test_check_manifest_sizes():
    assert check_manifest(_manifest(100, 200), "x", 310) == 310
    with pytest.raises(errors.PayloadTooLarge) as ei:
        check_manifest(_manifest(100, 200), "x", 309)
    assert ei.value.status == 413
    assert check_manifest(_manifest(10**12), "x", None) == 10**12 + 10


@pytest.mark.parametrize("manifest", [
    {"schemaVersion": 1, "fsLayers": []}, {"schemaVersion": 2}, _manifest(-1),
    _manifest(1, media="application/vnd.oci.image.layer.v1.tar+zstd"),
])
def test_check_manifest_rejects(manifest):
    with pytest.raises(errors.InvalidImage):
        check_manifest(manifest, "x", None)


def test_platform_choice():
    index = {"mediaType": "application/vnd.oci.image.index.v1+json", "manifests": [
        {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
        {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
    ]}
    assert is_index(index) and not is_index(_manifest(1))
    assert choose_platform(index, "x") == "sha256:amd"
    index["manifests"].pop()
    with pytest.raises(errors.InvalidImage, match="linux/arm64"):
        choose_platform(index, "x")
    check_platform({"os": "linux", "architecture": "amd64"}, "x")
    check_platform({}, "x")
    with pytest.raises(errors.InvalidImage, match="arm64"):
        check_platform({"os": "linux", "architecture": "arm64"}, "x")
    with pytest.raises(errors.InvalidImage):
        check_platform({"os": "windows", "architecture": "amd64"}, "x")


@pytest.mark.parametrize("stderr,cls", [
    ('time="x" level=fatal msg="reading manifest v1 in h/feat: manifest unknown: manifest unknown"\n',
     errors.ImageNotFound),
    ('level=fatal msg="... name unknown: repository name not known to registry"', errors.ImageNotFound),
    ('level=fatal msg="requested access to the resource is denied"', errors.ImageNotFound),
    ('level=fatal msg="reading manifest v1 in h/feat: unauthorized: authentication required"',
     errors.ImagePullFailed),
    ('level=fatal msg="pinging container registry h: dial tcp 127.0.0.1:1: connect: connection refused"',
     errors.ImagePullFailed),
    ('level=fatal msg="writing blob: write /x: no space left on device"', errors.ImageConversionFailed),
])
def test_classify(stderr, cls):
    exc = classify(stderr, "img")
    assert type(exc) is cls
    assert "level=fatal" not in exc.message and "img" in exc.message


def test_tail_unwraps_and_truncates():
    assert tail('time="t" level=fatal msg="a \\"quoted\\" reason"') == 'a "quoted" reason'
    assert len(tail("x" * 5000)) <= 801
