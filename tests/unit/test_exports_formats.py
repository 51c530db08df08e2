"""serve_app.exports: every format of a dataset export, read back with the tools that consume it (pycocotools,
an Ultralytics-style polygon rasteriser, OpenCV, PyAV), over a synthetic session, through a non-seekable
stream."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from serve_app.errors import InvalidInput
from serve_app.exports import DatasetWriter, build_labels, member, safe_name
from serve_app.exports import overlay_video as overlay_mod
from serve_app.schemas import ExportOptions, MergeGroup, MergeSpec, ObjectMeta, VideoObject

W, H = 96, 64
FRAMES = [2, 3, 4, 6, 7, 9]  # the caller's scope (frame indices need not be contiguous)


# --------------------------------------------------------------------------------------------- fixtures
class NonSeekable:
    """A write-only stream (no tell/seek): zipfile must write data descriptors."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()

    def write(self, data) -> int:
        return self.buf.write(data)

    def flush(self) -> None:
        pass


def _rect(x0: int, y0: int, w: int, h: int, width: int = W, height: int = H) -> np.ndarray:
    m = np.zeros((height, width), dtype=bool)
    m[y0:y0 + h, x0:x0 + w] = True
    return m


def _circle(cx: int, cy: int, r: int, width: int = W, height: int = H) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(m, (cx, cy), r, 1, -1)
    return m.astype(bool)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}  # type: ignore[union-attr]


def _objects(masks: dict[int, np.ndarray]) -> list[VideoObject]:
    out = []
    for obj_id, m in masks.items():
        ys, xs = np.nonzero(m)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
        out.append(VideoObject(id=obj_id, score=0.5 + obj_id / 10, box=box, area=int(m.sum()), mask=_rle(m)))
    return out


def make_session(width: int = W, height: int = H) -> list[tuple[int, bytes, dict[int, np.ndarray]]]:
    """(frame_index, jpeg, {obj_id: bool (H,W) ground truth}): object 1 a 24x20 rectangle moving right,
    object 2 a circle r=11 absent on frames 4 and 6, object 3 a 20x22 rectangle moving down."""
    session = []
    for k, f in enumerate(FRAMES):
        masks = {1: _rect(4 + 6 * k, 4, 24, 20, width, height)}
        if f not in (4, 6):
            masks[2] = _circle(70 - 3 * k, 40, 11, width, height)
        masks[3] = _rect(40, 2 + 3 * k, 20, 22, width, height)
        img = np.full((height, width, 3), 40, np.uint8)
        for obj_id, m in masks.items():
            img[m] = (60 * obj_id, 200 - 40 * obj_id, 90)
        ok, jpeg = cv2.imencode(".jpg", img)
        assert ok
        session.append((f, jpeg.tobytes(), masks))
    return session


def run_export(tmp_path: Path, options: ExportOptions, session, *, width: int = W, height: int = H,
               fps: float = 10.0, root: str = "export") -> tuple[zipfile.ZipFile, dict]:
    obj_ids = {i for _, _, masks in session for i in masks}
    labels = build_labels(options, obj_ids)
    stream = NonSeekable()
    workdir = tmp_path / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(stream, "w", compression=zipfile.ZIP_DEFLATED) as zf:  # type: ignore[arg-type]
        writer = DatasetWriter(zf, options, labels, width=width, height=height, fps=fps, workdir=str(workdir),
                               root=root, source={"session_id": "s1"})
        for f, jpeg, masks in session:
            writer.add_frame(f, jpeg, _objects(masks))
        assert writer.frames_written == len(session)
        manifest = writer.finish()
    return zipfile.ZipFile(io.BytesIO(stream.buf.getvalue())), manifest


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def _yolo_masks(text: str, width: int, height: int) -> dict[int, np.ndarray]:
    """Ultralytics' polygon2mask: denormalise, int32 (truncate), cv2.fillPoly; one mask per class."""
    out: dict[int, np.ndarray] = {}
    for line in text.splitlines():
        cls, *coords = line.split()
        assert len(coords) >= 6 and len(coords) % 2 == 0
        xy = np.array(coords, dtype=np.float64).reshape(-1, 2)
        assert ((xy >= 0) & (xy <= 1)).all()
        pts = (xy * [width, height]).astype(np.int32)
        m = out.setdefault(int(cls), np.zeros((height, width), np.uint8))
        cv2.fillPoly(m, [pts], 1)
    return {k: v.astype(bool) for k, v in out.items()}


ALL = ["coco_instance", "yolo_segmentation", "binary_masks_png", "overlay_mp4"]
META = [{"obj_id": 1, "class_name": "car", "instance_name": "red car"},
        {"obj_id": 2, "class_name": "ball", "instance_name": "ball"},
        {"obj_id": 3, "class_name": "box"},
        {"obj_id": 99, "class_name": "ghost"}]  # never appears: ignored


# ------------------------------------------------------------------------------------------ full export
@pytest.fixture(scope="module")
def full(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    session = make_session()
    options = ExportOptions(formats=ALL, include_images=True, object_meta=META)
    zf, manifest = run_export(tmp, options, session)
    return tmp, session, zf, manifest


def test_the_zip_was_streamed_and_everything_is_under_the_root(full):
    _, session, zf, manifest = full
    assert zf.testzip() is None
    assert all(i.flag_bits & 0x08 for i in zf.infolist())  # data descriptors: nothing was seeked back
    names = set(zf.namelist())
    assert all(n.startswith("export/") for n in names)
    expected = {"export/manifest.json", "export/annotations/instances.json", "export/classes.txt",
                "export/data.yaml", "export/overlay.mp4"}
    expected |= {f"export/images/{f:06d}.jpg" for f, _, _ in session}
    expected |= {f"export/labels/{f:06d}.txt" for f, _, _ in session}
    expected |= {f"export/masks/{stem}/{f:06d}.png" for f, _, _ in session for stem in ("red_car", "ball", "object_3")}
    assert names == expected
    assert json.loads(zf.read("export/manifest.json")) == manifest
    assert manifest["frames"] == {"start": 2, "end": 9, "count": 6}
    assert manifest["formats"] == ALL and manifest["source"] == {"session_id": "s1"}
    assert (manifest["width"], manifest["height"], manifest["fps"]) == (W, H, 10.0)
    assert manifest["classes"] == ["ball", "box", "car"]
    assert manifest["units"] == [
        {"unit_id": 1, "obj_ids": [1], "class_name": "car", "instance_name": "red car", "file_stem": "red_car"},
        {"unit_id": 2, "obj_ids": [2], "class_name": "ball", "instance_name": "ball", "file_stem": "ball"},
        {"unit_id": 3, "obj_ids": [3], "class_name": "box", "instance_name": "object_3", "file_stem": "object_3"}]


def test_images_are_the_jpeg_bytes(full):
    _, session, zf, _ = full
    for f, jpeg, _ in session:
        assert zf.read(f"export/images/{f:06d}.jpg") == jpeg


def test_coco_loads_in_pycocotools_and_gives_back_the_masks(full):
    tmp, session, zf, _ = full
    path = tmp / "instances.json"
    path.write_bytes(zf.read("export/annotations/instances.json"))
    coco = COCO(str(path))
    assert {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())} == {1: "ball", 2: "box", 3: "car"}
    assert sorted(coco.getImgIds()) == [f + 1 for f, _, _ in session]
    for f, _, masks in session:
        img = coco.loadImgs(f + 1)[0]
        assert img == {"id": f + 1, "file_name": f"images/{f:06d}.jpg", "width": W, "height": H, "frame_index": f}
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[f + 1]))
        assert sorted(a["track_id"] for a in anns) == sorted(masks)  # object 2 absent on frames 4 and 6
        for ann in anns:
            truth = masks[ann["track_id"]]
            assert np.array_equal(coco.annToMask(ann).astype(bool), truth)
            assert ann["area"] == truth.sum() and ann["iscrowd"] == 0
            ys, xs = np.nonzero(truth)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
            name = {1: "red car", 2: "ball", 3: "object_3"}[ann["track_id"]]
            cat = {1: "car", 2: "ball", 3: "box"}[ann["track_id"]]
            assert ann["instance_name"] == name and coco.loadCats(ann["category_id"])[0]["name"] == cat
            assert ann["score"] == pytest.approx(0.5 + ann["track_id"] / 10)
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert ids == list(range(1, len(ids) + 1))


def test_yolo_polygons_rasterise_back_to_the_masks(full):
    _, session, zf, _ = full
    classes = zf.read("export/classes.txt").decode().splitlines()
    assert classes == ["ball", "box", "car"]
    data = zf.read("export/data.yaml").decode()
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(data) == {"path": ".", "train": "images", "val": "images", "nc": 3,
                                    "names": {0: "ball", 1: "box", 2: "car"}}
    cls_of = {1: classes.index("car"), 2: classes.index("ball"), 3: classes.index("box")}
    for f, _, masks in session:
        got = _yolo_masks(zf.read(f"export/labels/{f:06d}.txt").decode(), W, H)
        assert set(got) == {cls_of[i] for i in masks}
        for obj_id, truth in masks.items():
            assert _iou(got[cls_of[obj_id]], truth) >= 0.9, (f, obj_id)


def test_png_masks_equal_the_ground_truth(full):
    _, session, zf, _ = full
    for f, _, masks in session:
        for obj_id, stem in ((1, "red_car"), (2, "ball"), (3, "object_3")):
            png = cv2.imdecode(np.frombuffer(zf.read(f"export/masks/{stem}/{f:06d}.png"), np.uint8),
                               cv2.IMREAD_UNCHANGED)
            assert png.dtype == np.uint8 and png.shape == (H, W)
            assert set(np.unique(png)) <= {0, 255}
            truth = masks.get(obj_id, np.zeros((H, W), bool))  # all zero where absent
            assert np.array_equal(png == 255, truth)


def _decode_video(data: bytes) -> tuple[list[np.ndarray], str]:
    with av.open(io.BytesIO(data)) as container:
        frames = [fr.to_ndarray(format="rgb24") for fr in container.decode(video=0)]
        return frames, container.streams.video[0].codec_context.name


def test_overlay_mp4_decodes_to_every_frame(full):
    _, session, zf, _ = full
    frames, codec = _decode_video(zf.read("export/overlay.mp4"))
    assert len(frames) == len(session) and all(fr.shape == (H, W, 3) for fr in frames)
    assert codec == ("h264" if overlay_mod.video_codec() == "libx264" else "mpeg4")
    # the masks are drawn: object 1's pixels are tinted away from the raw frame
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(session[0][1], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    inner = _rect(8, 8, 16, 12)
    assert np.abs(frames[0][inner].astype(int) - raw[inner].astype(int)).mean() > 10


# --------------------------------------------------------------------------------------- other options
def test_odd_size_fractional_fps_and_the_mpeg4_fallback(tmp_path, monkeypatch):
    session = make_session(95, 63)[:4]
    opts = ExportOptions(formats=["overlay_mp4", "binary_masks_png"])
    zf, manifest = run_export(tmp_path / "a", opts, session, width=95, height=63, fps=29.97)
    frames, _ = _decode_video(zf.read("export/overlay.mp4"))
    assert len(frames) == 4 and frames[0].shape == (64, 96, 3)  # even-padded
    with av.open(io.BytesIO(zf.read("export/overlay.mp4"))) as c:
        assert c.streams.video[0].average_rate == pytest.approx(29.97, rel=1e-3)
    assert manifest["fps"] == 29.97
    monkeypatch.setattr(overlay_mod, "video_codec", lambda: "mpeg4")
    zf, _ = run_export(tmp_path / "b", ExportOptions(formats=["overlay_mp4"]), session, width=95, height=63, fps=7.5)
    frames, codec = _decode_video(zf.read("export/overlay.mp4"))
    assert codec == "mpeg4" and len(frames) == 4 and frames[0].shape == (64, 96, 3)
    assert overlay_mod.frame_rate(7.5) == 7.5 and str(overlay_mod.frame_rate(30000 / 1001)) == "30000/1001"


def test_merge_group_is_one_unit_whose_mask_is_the_union(tmp_path):
    session = make_session()
    opts = ExportOptions(formats=["coco_instance", "binary_masks_png", "yolo_segmentation"],
                         object_meta=[{"obj_id": 3, "class_name": "animal"}],
                         merge={"mode": "group", "groups": [{"name": "the pair", "obj_ids": [3, 2]}]})
    zf, manifest = run_export(tmp_path, opts, session)
    assert manifest["units"] == [
        {"unit_id": 1, "obj_ids": [1], "class_name": "object", "instance_name": "object_1", "file_stem": "object_1"},
        {"unit_id": 2, "obj_ids": [2, 3], "class_name": "animal", "instance_name": "the pair",
         "file_stem": "the_pair"}]
    assert manifest["classes"] == ["animal", "object"]
    path = tmp_path / "i.json"
    path.write_bytes(zf.read("export/annotations/instances.json"))
    coco = COCO(str(path))
    for f, _, masks in session:
        union = masks[3] | masks.get(2, np.zeros((H, W), bool))
        png = cv2.imdecode(np.frombuffer(zf.read(f"export/masks/the_pair/{f:06d}.png"), np.uint8), 0)
        assert np.array_equal(png == 255, union)
        anns = {a["track_id"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=[f + 1]))}
        assert set(anns) == {1, 2}
        assert np.array_equal(coco.annToMask(anns[2]).astype(bool), union)
        assert anns[2]["score"] == pytest.approx(0.8) and anns[2]["instance_name"] == "the pair"
        assert coco.loadCats(anns[2]["category_id"])[0]["name"] == "animal"
        ys, xs = np.nonzero(union)
        assert anns[2]["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        got = _yolo_masks(zf.read(f"export/labels/{f:06d}.txt").decode(), W, H)
        assert _iou(got[0], union) >= 0.9


def test_coco_only_needs_no_jpeg_and_skips_unexported_objects(tmp_path):
    session = make_session()
    opts = ExportOptions(formats=["coco_instance"])
    labels = build_labels(opts, [1, 2])  # object 3 is not exported
    stream = NonSeekable()
    with zipfile.ZipFile(stream, "w") as zf:  # type: ignore[arg-type]
        writer = DatasetWriter(zf, opts, labels, width=W, height=H, fps=5, workdir=str(tmp_path))
        for f, _, masks in session:
            writer.add_frame(f, None, _objects(masks))
        writer.finish()
    zf = zipfile.ZipFile(io.BytesIO(stream.buf.getvalue()))
    data = json.loads(zf.read("export/annotations/instances.json"))
    assert {a["track_id"] for a in data["annotations"]} == {1, 2}
    assert zf.namelist() == ["export/annotations/instances.json", "export/manifest.json"]


def test_an_export_of_frames_with_no_objects_is_valid(tmp_path):
    session = [(f, jpeg, {}) for f, jpeg, _ in make_session()[:2]]
    zf, manifest = run_export(tmp_path, ExportOptions(formats=ALL), session)
    assert manifest["units"] == [] and manifest["classes"] == [] and manifest["frames"]["count"] == 2
    data = json.loads(zf.read("export/annotations/instances.json"))
    assert data["annotations"] == [] and len(data["images"]) == 2 and data["categories"] == []
    assert zf.read("export/labels/000002.txt") == b"" and zf.read("export/classes.txt") == b""
    assert pytest.importorskip("yaml").safe_load(zf.read("export/data.yaml"))["nc"] == 0
    assert len(_decode_video(zf.read("export/overlay.mp4"))[0]) == 2


def test_frames_out_of_order_a_missing_jpeg_and_a_wrong_mask_size_raise(tmp_path):
    session = make_session()
    opts = ExportOptions(formats=["overlay_mp4"])
    with zipfile.ZipFile(NonSeekable(), "w") as zf:  # type: ignore[arg-type]
        writer = DatasetWriter(zf, opts, build_labels(opts, [1, 2, 3]), width=W, height=H, fps=5,
                               workdir=str(tmp_path))
        f, jpeg, masks = session[1]
        with pytest.raises(ValueError, match="JPEG is needed"):
            writer.add_frame(f, None, _objects(masks))
        writer.add_frame(f, jpeg, _objects(masks))
        with pytest.raises(ValueError, match="increasing"):
            writer.add_frame(f, jpeg, _objects(masks))
        with pytest.raises(ValueError, match="mask size"):
            writer.add_frame(f + 1, jpeg, _objects({1: _rect(0, 0, 5, 5, 32, 32)}))
        writer.abort()


# ------------------------------------------------------------------------------------------------ names
HOSTILE = ["../../etc/passwd", "/abs", "a\\b", "..", "", ".", "  ", "日本語の名前", "x" * 300, "CON", "a/../../b",
           "../../etc/passwd"]


def test_hostile_names_stay_inside_the_root_and_stems_are_unique(tmp_path):
    session = make_session()
    extra = [(f, jpeg, {**masks, **{10 + i: _rect(i * 4, 50, 3, 3) for i in range(len(HOSTILE))}})
             for f, jpeg, masks in session[:2]]
    # model_construct: the 300-character name is past the schema's limit; the export layer must cope anyway
    meta = [ObjectMeta.model_construct(obj_id=10 + i, class_name=name, instance_name=name)
            for i, name in enumerate(HOSTILE)]
    opts = ExportOptions(formats=ALL, include_images=True, object_meta=meta)
    zf, manifest = run_export(tmp_path, opts, extra)
    for name in zf.namelist():
        assert name.startswith("export/") and "\\" not in name and not name.startswith("/")
        assert all(part not in ("", ".", "..") for part in name.split("/")), name
    stems = [u["file_stem"] for u in manifest["units"]]
    assert len({s.lower() for s in stems}) == len(stems)
    assert all(s == safe_name(s, "x") and len(s) <= 64 for s in stems)
    by_obj = {u["obj_ids"][0]: u for u in manifest["units"]}
    assert by_obj[10]["instance_name"] == "../../etc/passwd" and by_obj[10]["file_stem"] == "etc_passwd"
    assert by_obj[21]["file_stem"] == "etc_passwd_2"
    assert by_obj[14]["instance_name"] == "object_14"  # "" -> the default name
    classes = zf.read("export/classes.txt").decode("utf-8").split("\n")[:-1]
    assert classes == manifest["classes"] and "日本語の名前" in classes


@pytest.mark.parametrize(("value", "expected"), [
    ("red car", "red_car"), ("../../etc/passwd", "etc_passwd"), ("/abs", "abs"), ("a\\b", "a_b"), ("..", "fb"),
    ("", "fb"), ("...hidden", "hidden"), ("__x__", "x_"), ("日本", "fb"), ("a  //  b", "a_b"), ("x" * 300, "x" * 64),
    ("name.", "name"), ("con", "con_"), ("ok-1.2_x", "ok-1.2_x")])
def test_safe_name(value, expected):
    assert safe_name(value, "fb") == expected


@pytest.mark.parametrize("parts", [("..",), ("export", "..", "x"), ("/abs",), ("export", ""), ("a\\b",), ("export/",),
                                   ("c:x",), ("export", "."), ()])
def test_member_rejects_escapes(parts):
    with pytest.raises(ValueError):
        member(*parts)


def test_member_joins():
    assert member("export", "masks", "a", "000001.png") == "export/masks/a/000001.png"
    assert member("export/run1", "x") == "export/run1/x"


# ----------------------------------------------------------------------------------------------- labels
def test_labels_defaults_and_meta():
    meta = [{"obj_id": 5, "instance_name": "Cat"}, {"obj_id": 7, "class_name": "cat", "instance_name": "cat"}]
    opts = ExportOptions(formats=["coco_instance"], object_meta=meta)
    labels = build_labels(opts, [7, 5, 2, 7])
    assert [(u.unit_id, u.obj_ids, u.class_name, u.instance_name, u.file_stem) for u in labels.units] == [
        (1, (2,), "object", "object_2", "object_2"), (2, (5,), "object", "Cat", "Cat"),
        (3, (7,), "cat", "cat", "cat_2")]  # stems unique case-insensitively
    assert labels.classes == ["cat", "object"]
    assert labels.unit_of(7) is labels.units[2] and labels.unit_of(3) is None
    assert labels.class_index(labels.units[2]) == 0


@pytest.mark.parametrize(("options", "code"), [
    ({"merge": {"mode": "group", "groups": [{"name": "g", "obj_ids": [1, 4]}]}}, "unknown_merge_object"),
    ({"merge": {"mode": "group", "groups": [{"name": "g", "obj_ids": [1]}, {"name": "h", "obj_ids": [2, 1]}]}},
     "invalid_merge_groups"),
    ({"merge": {"mode": "group", "groups": [{"name": "g", "obj_ids": [1, 1]}]}}, "invalid_merge_groups"),
    ({"merge": {"mode": "group", "groups": [{"name": "g", "obj_ids": [1]}, {"name": "g", "obj_ids": [2]}]}},
     "invalid_merge_groups"),
    # the schema refuses this one too; built unvalidated to check build_labels on its own
    ({"merge": MergeSpec.model_construct(mode="none", groups=[MergeGroup(name="g", obj_ids=[1])])},
     "invalid_merge_groups"),
    ({"object_meta": [{"obj_id": 1, "class_name": "a"}, {"obj_id": 1, "class_name": "b"}]}, "duplicate_object_meta"),
])
def test_build_labels_errors(options, code):
    unvalidated = isinstance(options.get("merge"), MergeSpec)
    opts = (ExportOptions.model_construct if unvalidated else ExportOptions)(formats=["coco_instance"], **options)
    with pytest.raises(InvalidInput) as err:
        build_labels(opts, [1, 2, 3])
    assert err.value.code == code and err.value.status_code == 400


def test_group_class_falls_back_to_the_group_name():
    opts = ExportOptions(formats=["coco_instance"],
                         merge={"mode": "group", "groups": [{"name": "pair", "obj_ids": [3, 1]}]})
    labels = build_labels(opts, [1, 2, 3])
    assert [(u.obj_ids, u.class_name, u.instance_name) for u in labels.units] == [
        ((1, 3), "pair", "pair"), ((2,), "object", "object_2")]
    assert labels.unit_of(3) is labels.unit_of(1)
