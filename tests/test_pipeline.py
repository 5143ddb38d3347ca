"""The on-device pipeline: exact normalisation, channels_last output, augmentation only in training
and doing what its knobs say."""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from raydigits.config import make_config
from raydigits.pipeline import IMAGENET_MEAN, IMAGENET_STD, Preprocess, SplitBatches


def _reference(x_u8, size):
    x = F.interpolate(x_u8.float() / 255, size=(size, size), mode="bilinear", align_corners=False)
    return (x.expand(-1, 3, -1, -1) - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        1, 3, 1, 1
    )


def test_eval_preprocessing_is_resize_plus_imagenet_normalisation(small_mnist):
    x = torch.from_numpy(small_mnist.images["val"][:16].copy()).permute(0, 3, 1, 2)
    for cl in (True, False):
        pre = Preprocess(make_config({"img_size": 32, "channels_last": cl}), torch.device("cpu"))
        y = pre.eval(x)
        assert y.shape == (16, 3, 32, 32) and y.is_contiguous(memory_format=torch.channels_last) == cl
        assert torch.allclose(y, _reference(x, 32), atol=1e-5)
        # augmentation strength 0: training input == eval input
        off = Preprocess(make_config({"img_size": 32, "channels_last": cl, "aug_strength": 0}), torch.device("cpu"))
        assert torch.equal(off.train(x, torch.Generator().manual_seed(0)), off.eval(x))


def _centroid_x(img):
    w = img.clamp(min=0).sum(dim=(0, 1))
    return float((w * torch.arange(img.shape[-1])).sum() / w.sum())


def test_augmentation_shifts_rotates_and_is_seeded(small_mnist):
    x = torch.from_numpy(small_mnist.images["train"][:64].copy()).permute(0, 3, 1, 2)
    cfg = make_config({"img_size": 28, "aug_shift": 0.2, "aug_rotate": 0, "aug_scale": 0, "channels_last": False})
    pre = Preprocess(cfg, torch.device("cpu"))
    a = pre.train(x, torch.Generator().manual_seed(1))
    b = pre.train(x, torch.Generator().manual_seed(1))
    c = pre.train(x, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    plain = pre.eval(x)
    shifts = [abs(_centroid_x(a[i] - a[i].min()) - _centroid_x(plain[i] - plain[i].min())) for i in range(64)]
    assert max(shifts) > 1.5 and max(shifts) < 0.2 * 28 + 1  # up to 20 % of the side, never more
    # the gray level mass is kept by a pure shift (digits stay inside the frame mostly)
    assert np.median(shifts) > 0.3


def test_batches_cover_the_split_once_in_a_seeded_order(small_mnist):
    split = SplitBatches(small_mnist.images["train"][:100], small_mnist.labels["train"][:100], torch.device("cpu"))
    seen = torch.cat([sel for _, _, sel in split.batches(32, True, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(100))
    again = torch.cat([sel for _, _, sel in split.batches(32, True, torch.Generator().manual_seed(0))])
    assert torch.equal(seen, again)
    for _xb, yb, sel in split.batches(32):
        assert torch.equal(yb, torch.as_tensor(small_mnist.labels["train"][:100])[sel])


def _centroid_y(img):
    w = img.clamp(min=0).sum(dim=(0, 2))
    return float((w * torch.arange(img.shape[-2])).sum() / w.sum())


def test_training_path_is_the_eval_path_under_a_near_identity_warp(small_mnist):
    """The augmentation's own scaling, resize and normalisation equal evaluation's: with a warp of
    ~0 strength the two inputs match, at the images' size and when shrinking (antialiased first)."""
    x = torch.from_numpy(small_mnist.images["val"][:16].copy()).permute(0, 3, 1, 2)
    for size in (28, 16):
        pre = Preprocess(make_config({"img_size": size, "aug_strength": 1e-6}), torch.device("cpu"))
        assert torch.allclose(pre.train(x, torch.Generator().manual_seed(0)), pre.eval(x), atol=2e-3), size


def test_shifts_reach_as_far_vertically_as_horizontally(small_mnist):
    x = torch.from_numpy(small_mnist.images["train"][:256].copy()).permute(0, 3, 1, 2)
    pre = Preprocess(
        make_config({"img_size": 28, "aug_shift": 0.2, "aug_rotate": 0, "aug_scale": 0, "channels_last": False}),
        torch.device("cpu"),
    )
    a, plain = pre.train(x, torch.Generator().manual_seed(3)), pre.eval(x)
    dx = [abs(_centroid_x(a[i] - a[i].min()) - _centroid_x(plain[i] - plain[i].min())) for i in range(256)]
    dy = [abs(_centroid_y(a[i] - a[i].min()) - _centroid_y(plain[i] - plain[i].min())) for i in range(256)]
    assert 0.7 < np.median(dy) / np.median(dx) < 1.4, (np.median(dx), np.median(dy))


def _blurred_l(size: int) -> np.ndarray:
    """A synthetic digit with no symmetry (a mirrored or reversed rotation shows): an L, softened so
    that bilinear sampling is smooth."""
    img = np.zeros((size, size), np.float32)
    img[8:19, 10:13] = 1.0  # the stem
    img[16:19, 10:18] = 1.0  # the foot, to the right
    return cv2.GaussianBlur(img, (0, 0), 1.0)


def _centroid(img: np.ndarray) -> np.ndarray:
    ys, xs = np.indices(img.shape)
    return np.array([(img * xs).sum(), (img * ys).sum()]) / img.sum()


def test_rotation_zoom_and_shift_are_the_affine_warp_they_draw():
    """Each training image is its input rotated by its drawn angle (cv2's sense: counter-clockwise as
    shown) and zoomed by its drawn factor about the centre, after a shift of its drawn (tx, ty) (grid
    units: the side is 2) — equal to cv2.warpAffine of a synthetic L with that matrix, and its centroid
    lands where the matrix sends the input's. The parameters are read back from the same seeded
    generator: one uniform draw per image for the angle, the zoom, the x shift, the y shift, in order."""
    size, b, seed = 28, 16, 5
    rotate, scale, shift = 40.0, 0.25, 0.06
    cfg = make_config(
        {"img_size": size, "aug_rotate": rotate, "aug_scale": scale, "aug_shift": shift, "channels_last": False}
    )
    src = _blurred_l(size)
    x = torch.from_numpy(np.round(src * 255).astype(np.uint8)).expand(b, 1, size, size)
    out = Preprocess(cfg, torch.device("cpu")).train(x, torch.Generator().manual_seed(seed))
    got = (out[:, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]).numpy()  # back to [0, 1]
    g = torch.Generator().manual_seed(seed)
    angle, zoom, tx, ty = (
        (torch.rand(b, generator=g).double() * 2 - 1) * lim for lim in (rotate, scale, 2 * shift, 2 * shift)
    )
    zoom = 1 + zoom
    assert angle.abs().max() > 0.7 * rotate and (zoom - 1).abs().max() > 0.7 * scale  # the draws are not small
    plain = np.round(src * 255).astype(np.float32) / 255
    c = (size - 1) / 2
    for i in range(b):
        m = cv2.getRotationMatrix2D((c, c), float(angle[i]), float(zoom[i]))
        m[:, 2] -= m[:, :2] @ (np.array([tx[i], ty[i]]) * size / 2)  # the shift, in pixels, first
        want = cv2.warpAffine(plain, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        assert np.abs(got[i] - want).max() < 1e-4, (i, float(angle[i]), float(zoom[i]))
        moved = m @ np.append(_centroid(plain), 1.0)
        assert np.allclose(_centroid(np.clip(got[i], 0, None)), moved, atol=0.05), (i, _centroid(got[i]), moved)
