import numpy as np

from mgpu_lab.data import load_digits, synthetic_images, train_test_split


def test_digits_are_the_uci_set():
    x, y = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == np.float32 and y.dtype == np.int32
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert load_digits(flat=True)[0].shape == (1797, 64)


def test_split_is_disjoint_and_complete():
    x, y = load_digits(flat=True)
    (a, _), (b, _) = train_test_split(x, y, test_fraction=0.2, seed=0)
    assert len(a) + len(b) == 1797 and len(b) == 359


def test_synthetic_images_are_deterministic():
    x1, y1 = synthetic_images(5, image_size=224, channels=3, seed=3)
    x2, y2 = synthetic_images(5, image_size=224, channels=3, seed=3)
    assert x1.shape == (5, 3, 224, 224) and x1.dtype == np.float32
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
