"""Shared image-embedding machinery: weights lookup and checksums, deduplication of identical frames, batching,
resizing of frames of other sizes, provenance, and the registry entries."""

import hashlib

import numpy as np
import pytest
import torch

from features.base import build_extractor, extractor_names
from features.image_batching import resize_frames, unique_frames
from features.weights import (MissingWeightsError, WeightsMismatchError, check_state_dict, locate_weights,
                              sha256_file)
from tests.features.conftest import assert_close


def test_registry_has_the_three_visual_embeddings():
    names = extractor_names()
    assert {"openl3", "vgg16", "tce"} <= set(names)
    dims = {n: build_extractor(n).dim for n in ("openl3", "vgg16", "tce")}
    assert dims == {"openl3": 512, "vgg16": 4096, "tce": 2048}
    # constructing is cheap: no network is built before the first embed / load
    assert all(build_extractor(n)._net is None for n in ("openl3", "vgg16", "tce"))


def test_unique_frames_groups_exact_copies():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    c = a.copy()
    c[0, 0, 0] ^= 1  # differs by one bit: must stay distinct
    frames = np.stack([a, b, a, c, b, a])
    keep, inverse = unique_frames(frames)
    assert keep.tolist() == [0, 1, 3]
    assert inverse.tolist() == [0, 1, 0, 2, 1, 0]
    np.testing.assert_array_equal(frames[keep][inverse], frames)


def test_dedup_batching_and_fusion_do_not_change_values(weights_home):
    # 64 px frames and network input (as in a small extraction): the property does not depend on the size
    rng = np.random.default_rng(1)
    frames = rng.integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    frames[3] = frames[1]
    frames[4] = 0  # black screen
    plain = build_extractor("openl3", allow_random_weights=True, dedup_identical_frames=False, batch_size=5,
                            fuse_batchnorm=False, channels_last=False, input_size=64)
    dedup = build_extractor("openl3", allow_random_weights=True, batch_size=2, input_size=64)
    out_plain, out_dedup = plain.embed(frames), dedup.embed(frames)
    assert (plain.frames_computed, dedup.frames_computed) == (5, 4)
    assert_close(out_dedup, out_plain)
    np.testing.assert_array_equal(out_dedup[3], out_dedup[1])
    assert np.isfinite(out_dedup[4]).all()  # a black frame still gives an embedding
    # layout, batch size and batch-norm folding are not part of the identity; deduplication is recorded (#13)
    a, b = plain.provenance(), dedup.provenance()
    assert a["config"].pop("dedup_identical_frames") is False and b["config"].pop("dedup_identical_frames") is True
    assert a == b


def test_frames_of_other_sizes_are_resized(weights_home):
    """Values, not only shapes: `stretch` keeps the whole frame, `center_crop` keeps its centre (openl3's rule)."""
    h, w = 120, 160
    halves = np.zeros((1, h, w, 3), np.uint8)
    halves[..., : w // 2, :] = (200, 30, 30)  # left half red
    halves[..., w // 2:, :] = (30, 30, 200)  # right half blue
    x = torch.from_numpy(halves).permute(0, 3, 1, 2).float()
    out = resize_frames(x, 224, "stretch")
    assert out.shape == (1, 3, 224, 224)
    # away from the seam (antialiasing blurs a few pixels) each half keeps its colour over the full height
    np.testing.assert_allclose(out[0, :, :, :100].permute(1, 2, 0).numpy(), np.broadcast_to([200, 30, 30], (224, 100, 3)),
                               atol=1e-3)
    np.testing.assert_allclose(out[0, :, :, 124:].permute(1, 2, 0).numpy(), np.broadcast_to([30, 30, 200], (224, 100, 3)),
                               atol=1e-3)

    # centre crop: shorter side 120 -> 256 (x 2.133), width 341, central 224 x 224. A 24 px green frame around a
    # grey centre becomes ~51 px, inside the 16 px (top/bottom) and 58 px (left/right) that the crop drops... except
    # top and bottom: make only the left and right borders green, and the top and bottom 6 rows (-> ~13 px) yellow.
    framed = np.full((1, h, w, 3), 128, np.uint8)
    framed[:, :, :24] = framed[:, :, -24:] = (20, 220, 20)
    framed[:, :6] = framed[:, -6:] = (230, 230, 20)
    crop = resize_frames(torch.from_numpy(framed).permute(0, 3, 1, 2).float(), 224, "center_crop")
    assert crop.shape == (1, 3, 224, 224)
    np.testing.assert_allclose(crop.numpy(), 128.0, atol=1e-3)  # only the grey centre is left
    stretched = resize_frames(torch.from_numpy(framed).permute(0, 3, 1, 2).float(), 224, "stretch")
    assert stretched[0, 1, 112, 0] > 200  # stretching keeps the green border (the modes differ)

    # The extractors use their own mode: OpenL3 (center crop) sees exactly the grey 224 px frame; TCE (stretch)
    # sees the borders.
    grey = np.full((1, 224, 224, 3), 128, np.uint8)
    for name, same in (("openl3", True), ("tce", False)):
        ex = build_extractor(name, allow_random_weights=True, batch_size=1)
        got, want = ex.embed(framed), ex.embed(grey)
        assert got.shape == (1, ex.dim) and np.isfinite(got).all()
        assert np.allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max()) == same, name
    x224 = torch.rand(1, 3, 224, 224)
    assert resize_frames(x224, 224, "center_crop") is x224  # pipeline frames pass unchanged
    assert resize_frames(x224, 224, "stretch") is x224


def test_empty_and_bad_frames(weights_home):
    ex = build_extractor("tce", allow_random_weights=True)
    assert ex.embed(np.zeros((0, 224, 224, 3), np.uint8)).shape == (0, 2048)
    assert ex._net is None  # nothing to compute: nothing built
    with pytest.raises(ValueError, match="uint8"):
        ex.embed(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        ex.embed(np.zeros((224, 224, 3), np.uint8))


def test_autocast_is_gpu_only_and_recorded(weights_home):
    ex = build_extractor("openl3", allow_random_weights=True, autocast="bf16", device="cpu")
    assert ex.provenance()["config"]["autocast"] == "none"
    with pytest.raises(ValueError, match="autocast"):
        build_extractor("openl3", allow_random_weights=True, autocast="int8", device="cpu").provenance()


def test_locate_weights_order_and_errors(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir(), d2.mkdir()
    (d2 / "w.pth").write_bytes(b"x")
    assert locate_weights("f", None, "w.pth", [d1, d2]) == d2 / "w.pth"
    (d1 / "w.pth").write_bytes(b"y")
    assert locate_weights("f", None, "w.pth", [d1, d2]) == d1 / "w.pth"
    assert locate_weights("f", str(d2 / "w.pth"), "ignored", [d1]) == d2 / "w.pth"
    with pytest.raises(MissingWeightsError) as err:
        locate_weights("f", str(tmp_path / "nope.pth"), "w.pth", [d1])
    assert err.value.searched == [tmp_path / "nope.pth"] and "nope.pth" in str(err.value)


def test_sha256_file(tmp_path):
    p = tmp_path / "w.bin"
    data = np.random.default_rng(3).bytes(5_000_000)
    p.write_bytes(data)
    assert sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_check_state_dict_names_the_first_bad_key(tmp_path):
    expected = {"a.weight": (2, 3), "b.weight": (4,)}
    ok = {"a.weight": torch.zeros(2, 3), "b.weight": torch.zeros(4)}
    check_state_dict(tmp_path, expected, ok)
    with pytest.raises(WeightsMismatchError) as err:
        check_state_dict(tmp_path, expected, {**ok, "a.weight": torch.zeros(3, 2)})
    assert err.value.layer == "a.weight" and "(3, 2)" in str(err.value)
    with pytest.raises(WeightsMismatchError) as err:
        check_state_dict(tmp_path, expected, {"a.weight": torch.zeros(2, 3)})
    assert err.value.layer == "b.weight"
    with pytest.raises(WeightsMismatchError) as err:
        check_state_dict(tmp_path, expected, {**ok, "c": torch.zeros(1)})
    assert err.value.layer == "c"
