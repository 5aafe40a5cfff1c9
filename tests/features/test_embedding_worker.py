"""The embedding worker: every CNN on one upload of whole clips, fixed batch shapes, identical frames once per clip.

The property that bit-identical resume rests on: a clip's embedding does not depend on which clips shared its
batch. Checked bit for bit on CPU for the three CNNs, with the clip at a position where it straddles a forward-pass
boundary and fills the last (padded) pass, against the clip embedded alone.
"""

import numpy as np
import pytest

from features.base import build_extractor
from features.embedding_worker import EmbeddingWorker, distinct_frames, group_by_device
from features.image_batching import unique_frames

SIZE = 32  # small frames and network inputs keep this test fast; the property does not depend on the size


def cnn(name, **kw):
    kw.setdefault("batch_size", 8)
    return build_extractor(name, allow_random_weights=True, device="cpu", input_size=SIZE, **kw)


def clip_frames(seed, n=12, repeats=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    for i in range(repeats):  # a still stretch, as in a video that pauses
        frames[n - 1 - i] = frames[0]
    return frames


@pytest.fixture(scope="module")
def cnns():
    return [cnn(name) for name in ("openl3", "vgg16", "tce")]


def test_a_clip_alone_equals_the_same_clip_inside_a_mixed_batch_bit_for_bit(cnns):
    target = clip_frames(1, n=12, repeats=3)  # 9 distinct frames
    valid = np.ones(12, bool)
    others = [clip_frames(10 + k, n=12) for k in range(2)]
    worker = EmbeddingWorker(cnns, upload_frames=40, frame_size=SIZE)
    clips = [distinct_frames("a", others[0], valid, dedup=True),
             distinct_frames("b", others[1][:5], valid[:5], dedup=True),
             distinct_frames("target", target, valid, dedup=True)]
    # The target sits at rows 17..25 of the upload: it straddles the passes [16, 24) and [24, 32), and the last
    # pass is padded; alone, it fills rows 0..8 of a padded pass. Different shapes would round differently
    # (VGG16's fully connected layers do on this CPU), so this fails if passes are not of a fixed size.
    mixed = {c.key: c for c in worker.embed_clips(clips)}
    assert worker.batches_launched == 1 and worker.frames_uploaded == 12 + 5 + 9
    for ex in cnns:
        alone = ex.embed(target)
        assert alone.shape == (12, ex.dim)
        np.testing.assert_array_equal(mixed["target"].embeddings[ex.name], alone, err_msg=ex.name)
        # and the other clips are what they are alone, too
        np.testing.assert_array_equal(mixed["b"].embeddings[ex.name], ex.embed(others[1][:5]), err_msg=ex.name)
    # the repeated frames got the embedding of the frame they repeat
    for ex in cnns:
        emb = mixed["target"].embeddings[ex.name]
        np.testing.assert_array_equal(emb[11], emb[0])
        assert not np.array_equal(emb[1], emb[0])


def test_every_cnn_runs_on_one_upload_and_identical_frames_once(cnns):
    for ex in cnns:
        ex.frames_computed = 0
    still = np.repeat(clip_frames(3, n=1), 12, axis=0)  # a still-image video: one distinct frame
    moving = clip_frames(4, n=12)
    valid = np.ones(12, bool)
    worker = EmbeddingWorker(cnns, upload_frames=24, frame_size=SIZE)
    out = worker.embed_clips([distinct_frames(k, f, valid, dedup=True) for k, f in (("still", still),
                                                                                   ("moving", moving))])
    assert worker.batches_launched == 1 and worker.frames_uploaded == 13
    assert [ex.frames_computed for ex in cnns] == [13, 13, 13]
    assert [c.key for c in out] == ["still", "moving"]
    for c in out:
        assert set(c.embeddings) == {"openl3", "vgg16", "tce"}
        assert all(e.shape == (12, ex.dim) and e.dtype == np.float32 for ex, e in zip(cnns, c.embeddings.values()))
    # without deduplication all 12 frames of the still clip are uploaded, and the values do not change
    plain = EmbeddingWorker(cnns, upload_frames=24, frame_size=SIZE)
    again = plain.embed_clips([distinct_frames("still", still, valid, dedup=False)])
    assert plain.frames_uploaded == 12
    for ex in cnns:
        np.testing.assert_array_equal(again[0].embeddings[ex.name], out[0].embeddings[ex.name])


def test_whole_clips_are_packed_into_fixed_upload_batches(cnns):
    worker = EmbeddingWorker(cnns[:1], upload_frames=20, frame_size=SIZE)
    valid = np.ones(12, bool)
    clips = [distinct_frames(k, clip_frames(20 + k), valid, dedup=False) for k in range(3)]
    out = worker.embed_clips(clips)
    # 12 + 12 > 20: never split a clip, so each clip is its own batch
    assert worker.batches_launched == 3 and [c.key for c in out] == [0, 1, 2]
    batch = worker.new_batch()
    batch.add(clips[0])
    assert not batch.fits(clips[1])
    with pytest.raises(ValueError, match="do not fit"):
        batch.add(clips[1])
    with pytest.raises(ValueError, match="frames shaped"):
        batch.add(distinct_frames("big", np.zeros((2, 64, 64, 3), np.uint8), valid[:2], dedup=False))
    worker.new_batch()
    with pytest.raises(RuntimeError, match="staging buffers"):
        worker.new_batch()  # at most two batches exist at a time: one filling, one computing


def test_distinct_frames_reuses_the_decoders_hashes():
    frames = clip_frames(5, n=6, repeats=2)
    valid = np.array([1, 1, 1, 1, 0, 0], bool)
    unique = unique_frames(frames)
    c = distinct_frames(7, frames, valid, dedup=True, unique=unique)
    assert c.n_frames == 4 and c.inverse.tolist() == [0, 1, 2, 3, 0, 0]
    np.testing.assert_array_equal(c.frames[c.inverse], frames)
    assert c.valid is valid


def test_cnns_are_grouped_by_device_and_deduplication():
    a, b = cnn("openl3"), cnn("tce")
    c = cnn("vgg16", dedup_identical_frames=False)
    assert [[ex.name for ex in g] for g in group_by_device([a, b, c])] == [["openl3", "tce"], ["vgg16"]]
    with pytest.raises(ValueError, match="one embedding worker per device"):
        EmbeddingWorker([a, build_extractor("tce", allow_random_weights=True, device="meta")], 16, SIZE)


def test_provenance_names_deduplication_and_the_effective_autocast():
    on, off = cnn("openl3"), cnn("openl3", dedup_identical_frames=False)
    assert on.provenance()["config"]["dedup_identical_frames"] is True
    assert off.provenance()["config"]["dedup_identical_frames"] is False
    assert on.provenance() != off.provenance()
    # bf16 is the default; on a CPU the effective mode is none, and that is what is recorded
    assert on.config.autocast == "bf16" and on.provenance()["config"]["autocast"] == "none"
    # numerics-only choices stay out of the identity
    for key in ("cudnn_benchmark", "channels_last", "fuse_batchnorm", "batch_size", "device"):
        assert key not in on.provenance()["config"]
