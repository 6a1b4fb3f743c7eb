"""Image pools: real images (scikit-learn's digits as PNG, its sample JPEG photos), a small CNN,
local folders, s3:// prefixes and parquet columns of bytes or URIs."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

import alray
from alray.config import ImageSpec
from alray.sources.decode import preprocess
from tests.conftest import write_spec

GRAY = {"mode": "L", "resize": 16, "crop": 12}
RGB = {"mode": "RGB", "resize": 64, "crop": 56}


def png_bytes(array: np.ndarray) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(array).save(sink, format="PNG")
    return sink.getvalue()


def jpeg_bytes(array: np.ndarray, **save) -> bytes:
    sink = io.BytesIO()
    Image.fromarray(array).save(sink, format="JPEG", **save)
    return sink.getvalue()


def digit_images(count: int) -> list[np.ndarray]:
    from sklearn.datasets import load_digits

    return [(img * 16).clip(0, 255).astype(np.uint8) for img in load_digits().images[:count]]


def sample_photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return list(load_sample_images().images)


def write_digit_folder(folder, count: int = 60) -> list[str]:
    """PNG digits in two subfolders, plus a corrupt JPEG and a hidden file; returns good ids."""
    ids = []
    for i, image in enumerate(digit_images(count)):
        key = f"{'even' if i % 2 == 0 else 'odd'}/digit-{i:03d}.png"
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        (folder / key).write_bytes(png_bytes(image))
        ids.append(key)
    (folder / "odd" / "broken.jpg").write_bytes(jpeg_bytes(digit_images(1)[0])[:40])
    (folder / ".thumbs").mkdir()
    (folder / ".thumbs" / "x.png").write_bytes(png_bytes(digit_images(1)[0]))
    return ids


def image_spec(tmp_path, uri, image=GRAY, factory="cnn_gray", **pool):
    return write_spec(tmp_path, pool={"uri": uri, "format": "images", "feature_column": None,
                                      "image": image, "shard_rows": 16, **pool},
                      model={"kind": "python", "path": f"tests.models:{factory}"},
                      selection={"k": 10},
                      resources={"on_error": "skip", "max_quarantined": 1})


# ----------------------------------------------------------------------------------- preprocess


def test_preprocess_resizes_crops_and_normalizes():
    photo = sample_photos()[0]  # 427 x 640 RGB
    spec = ImageSpec(mode="RGB", resize=64, crop=56)
    out = preprocess(jpeg_bytes(photo, quality=95), spec)
    assert out.shape == (3, 56, 56) and out.dtype == np.float32
    img = Image.open(io.BytesIO(jpeg_bytes(photo, quality=95))).convert("RGB")
    img = img.resize((int(64 * 640 / 427), 64), Image.BILINEAR)
    left = int(round((img.size[0] - 56) / 2.0))
    expected = np.asarray(img.crop((left, 4, left + 56, 60)), np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(out, ((expected - mean) / std).transpose(2, 0, 1), atol=1e-5)


def test_exif_orientation_is_applied_and_alpha_dropped():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    rotated = Image.fromarray(pixels)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    sink = io.BytesIO()
    rotated.save(sink, format="PNG", exif=exif)
    spec = ImageSpec(mode="RGB", resize=30, crop=30)
    upright = np.asarray(Image.fromarray(pixels).transpose(Image.ROTATE_270))
    assert np.allclose(preprocess(sink.getvalue(), spec), preprocess(png_bytes(upright), spec))
    rgba = np.dstack([pixels, np.full((30, 40), 7, np.uint8)])
    assert np.allclose(preprocess(png_bytes(rgba), spec), preprocess(png_bytes(pixels), spec))


# ----------------------------------------------------------------------------------- planning


def test_s3_listing_is_paged_and_plans_as_local(tmp_path, s3, s3_server):
    """Planning an s3:// prefix pages through the listing (7 keys a page here), caches no listing
    dicts, and gives the same shards as the same folder on disk; globs select alike on both."""
    from alray.sources.files import iter_objects, url_to_fs
    from alray.sources.images import plan_image_shards

    write_digit_folder(tmp_path / "digits", count=30)
    s3.mkdir("photos")
    uploaded = []
    for path in sorted((tmp_path / "digits").rglob("*")):
        if path.is_file():
            uploaded.append(f"photos/set/{path.relative_to(tmp_path / 'digits')}")
            s3.put_file(str(path), uploaded[-1])
    storage = {"s3": {"endpoint_url": s3_server}}
    fs, root = url_to_fs("s3://photos/set/", storage)
    fs.invalidate_cache()
    paged = [name for name, _ in iter_objects(fs, root, page_size=7)]
    assert paged == sorted(uploaded) and len(paged) == 32
    assert not fs.dircache
    selected = {}
    for pattern in ("", "even/*.png", "*/digit-01*.png", "**/*.jpg"):
        local = plan_image_shards([f"{tmp_path}/digits/{pattern}"], 8)
        remote = plan_image_shards([f"s3://photos/set/{pattern}"], 8, storage)
        assert [(s.members, s.first_row) for s in remote] == \
               [(s.members, s.first_row) for s in local], pattern  # versions: ETags vs mtimes
        selected[pattern] = [key for shard in remote for key in shard.members]
    assert not fs.dircache
    assert len(selected[""]) == 31  # the hidden folder is skipped
    assert selected["*/digit-01*.png"] == [f"{'even' if i % 2 == 0 else 'odd'}/digit-{i:03d}.png"
                                           for i in (10, 12, 14, 16, 18, 11, 13, 15, 17, 19)]
    assert selected["**/*.jpg"] == ["odd/broken.jpg"]
    with pytest.raises(alray.ConfigError, match=r"^pool\.uri: nothing at 's3://nobucket/x/'"):
        plan_image_shards(["s3://nobucket/x/"], 8, storage)


def test_each_image_is_one_get_request(s3, s3_server):
    """Unless told otherwise s3fs looks an object's size up (a HEAD) before each GET; reading an
    image shard makes exactly one GetObject per image, counted by botocore's own event hooks."""
    from alray.sources.files import url_to_fs
    from alray.sources.images import plan_image_shards, read_image_shard

    s3.mkdir("photos")
    for i, image in enumerate(digit_images(12)):
        s3.pipe_file(f"photos/d/{i:02d}.png", png_bytes(image))
    storage = {"s3": {"endpoint_url": s3_server}}
    [shard] = plan_image_shards(["s3://photos/d/"], 100, storage)
    fs, _ = url_to_fs("s3://photos/d/", storage)
    fs.invalidate_cache()
    calls = []

    def count(model, **_):
        calls.append(model.name)

    fs.s3.meta.events.register("before-call.s3", count)
    try:
        batches = list(read_image_shard(shard, ImageSpec(**GRAY), 5, storage))
    finally:
        fs.s3.meta.events.unregister("before-call.s3", count)
    assert sum(len(b) for b in batches) == 12
    assert not any(mask.any() for b in batches for _, _, mask in b.bad)
    assert calls == ["GetObject"] * 12


# ----------------------------------------------------------------------------------- jobs


@pytest.mark.usefixtures("ray_session")
def test_local_folder_with_a_corrupt_image(tmp_path):
    ids = write_digit_folder(tmp_path / "digits")
    result = alray.run(alray.JobSpec.from_yaml(image_spec(tmp_path, "./digits/")))
    counts = result.counts
    assert counts["rows_in"] == 61 and counts["rows_scored"] == 60
    errors = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").open()]
    assert [(e["kind"], e["id"]) for e in errors] == [("decode_error", "odd/broken.jpg")]
    scores = pq.read_table(tmp_path / "out" / "scores")
    assert sorted(scores.column("id").to_pylist()) == sorted(ids)
    order = scores.sort_by([("score", "descending"), ("id", "ascending")])
    assert result.selection.column("id").to_pylist() == order.column("id").to_pylist()[:10]


@pytest.mark.usefixtures("ray_session")
def test_s3_prefix_gives_the_local_selection(tmp_path, s3, s3_server):
    write_digit_folder(tmp_path / "digits")
    local = alray.run(alray.JobSpec.from_yaml(image_spec(tmp_path, "./digits/")))
    s3.mkdir("photos")
    for path in sorted((tmp_path / "digits").rglob("*")):
        if path.is_file():
            s3.put_file(str(path), f"photos/set/{path.relative_to(tmp_path / 'digits')}")
    spec = image_spec(tmp_path, "s3://photos/set/")
    raw = alray.JobSpec.from_yaml(spec, overrides={
        "storage.s3.endpoint_url": s3_server, "output.uri": "s3://photos/out"})
    s3.mkdir("photos/out")
    remote = alray.run(raw)
    for column in ("rank", "id", "score", "predicted"):
        assert remote.selection.column(column).equals(local.selection.column(column))
    assert remote.counts == local.counts


@pytest.mark.usefixtures("ray_session")
def test_parquet_of_image_bytes_and_of_image_uris(tmp_path, s3, s3_server):
    photos = sample_photos()
    crops = [photo[y:y + 200, x:x + 200] for photo in photos for y in (0, 150) for x in (0, 300)]
    blobs = [jpeg_bytes(c) for c in crops] + [b"not an image", None]
    (tmp_path / "pool").mkdir()
    pq.write_table(pa.table({"id": np.arange(len(blobs)), "jpeg": pa.array(blobs, pa.binary()),
                             "label": [f"crop-{i}" for i in range(len(blobs))]}),
                   tmp_path / "pool" / "photos.parquet")
    spec = image_spec(tmp_path, "./pool/", image=RGB, factory="cnn_rgb", image_column="jpeg",
                      carry=["label"])
    result = alray.run(alray.JobSpec.from_yaml(spec))
    kinds = {json.loads(line)["row"]: json.loads(line)["kind"]
             for line in (tmp_path / "out" / "errors.jsonl").open()}
    assert kinds == {len(crops): "decode_error", len(crops) + 1: "missing_object"}
    assert result.counts["rows_scored"] == len(crops)
    assert result.selection.column("label").to_pylist() == [
        f"crop-{i}" for i in result.selection.column("id").to_pylist()]

    s3.mkdir("crops")
    for i, blob in enumerate(blobs[:len(crops)]):
        s3.pipe_file(f"crops/{i}.jpg", blob)
    uris = [f"s3://crops/{i}.jpg" for i in range(len(crops))] + [
        "s3://crops/gone.jpg", str(tmp_path / "pool"), "nosuch://crops/0.jpg", "s3://crops/"]
    pq.write_table(pa.table({"id": np.arange(len(uris)), "uri": uris}),
                   tmp_path / "pool" / "photos.parquet")
    spec = image_spec(tmp_path, "./pool/", image=RGB, factory="cnn_rgb", image_uri_column="uri")
    by_uri = alray.run(alray.JobSpec.from_yaml(spec, overrides={
        "storage.s3.endpoint_url": s3_server}, out=str(tmp_path / "out-uri")))
    assert by_uri.selection.column("id").equals(result.selection.column("id"))
    errors = [json.loads(line) for line in (tmp_path / "out-uri" / "errors.jsonl").open()]
    assert [(e["kind"], e["row"]) for e in errors] == [  # a folder, an unknown protocol, no key
        ("missing_object", len(crops)), ("unreadable", len(crops) + 1),
        ("unreadable", len(crops) + 2), ("unreadable", len(crops) + 3)]
    assert "first cause in its batch: [Errno 21] Is a directory" in errors[1]["message"]
    assert by_uri.counts["rows_in"] == len(uris) and by_uri.counts["rows_quarantined"] == 4


@pytest.mark.usefixtures("ray_session")
def test_changed_preprocessing_rescores_on_resume(tmp_path):
    write_digit_folder(tmp_path / "digits", count=20)
    spec = image_spec(tmp_path, "./digits/")
    first = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    again = alray.run(alray.JobSpec.from_yaml(spec), progress=False)
    assert again.counts["shards_reused"] == first.counts["shards"]
    resized = alray.run(alray.JobSpec.from_yaml(spec, overrides={"pool.image.resize": 12}),
                        progress=False)
    assert resized.counts["shards_reused"] == 0
    assert not resized.selection.column("score").equals(first.selection.column("score"))
