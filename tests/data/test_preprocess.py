from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from carinspect.config import ModelConfig, load_params
from carinspect.contracts.preprocess import PreprocessSpec
from carinspect.data.decoding.images import resize_short_side
from carinspect.data.loading.augment import AugmentError, apply_augment, build_augment
from carinspect.data.loading.preprocess import preprocess
from tests.conftest import REPO_ROOT


def test_preprocess_shape_and_normalisation() -> None:
    spec = PreprocessSpec.from_model(ModelConfig(img_size=32))
    img = Image.new("RGB", (80, 40), (124, 116, 104))  # ImageNet mean colour
    out = preprocess(img, spec)
    assert out.shape == (3, 32, 32) and out.dtype == np.float32
    assert np.abs(out).max() < 0.01
    assert np.array_equal(preprocess(np.asarray(img), spec), out)


def test_crop_mode_keeps_the_centre() -> None:
    arr = np.zeros((100, 200, 3), dtype=np.uint8)
    arr[:, 80:120] = 255
    spec = PreprocessSpec(img_size=20, mean=(0, 0, 0), std=(1, 1, 1), resize="crop", crop_pct=1.0)
    out = preprocess(arr, spec)
    assert out[:, 10, 10].min() > 0.9 and out[:, 10, 0].max() < 0.1


def test_spec_round_trip() -> None:
    spec = PreprocessSpec.from_model(ModelConfig(img_size=48, resize="crop"), source_short_side=64)
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    old = {k: v for k, v in spec.to_dict().items() if k != "source_short_side"}  # older model.json
    assert PreprocessSpec.from_dict(old).source_short_side is None


def test_a_full_size_upload_is_reduced_as_ingest_reduced_the_training_images() -> None:
    spec = PreprocessSpec.from_model(ModelConfig(img_size=32), source_short_side=64)
    rng = np.random.default_rng(3)
    upload = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    cached = resize_short_side(upload, 64)  # what ingest stored for training and evaluation
    assert np.array_equal(preprocess(upload, spec), preprocess(cached, spec))
    assert np.array_equal(
        preprocess(cached, spec), preprocess(cached, replace(spec, source_short_side=None))
    )
    assert not np.array_equal(
        preprocess(upload, spec), preprocess(upload, replace(spec, source_short_side=None))
    )


def test_default_augmentations_build_and_are_seeded() -> None:
    augment = build_augment(load_params(REPO_ROOT / "params.yaml").train.augment)
    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    a, b = apply_augment(augment, img, 11), apply_augment(augment, img, 11)
    assert np.array_equal(a, b)
    assert any(not np.array_equal(a, apply_augment(augment, img, s)) for s in range(12, 20))


def test_bad_augmentations_are_named() -> None:
    with pytest.raises(AugmentError, match=r"train.augment\[1\]: 'Blurr' .* did you mean Blur"):
        build_augment([{"name": "HorizontalFlip"}, {"name": "Blurr"}])
    with pytest.raises(AugmentError, match=r"train.augment\[0\] \(GaussNoise\)"):
        build_augment([{"name": "GaussNoise", "std_range": "loud"}])


def test_null_size_and_normalisation_come_from_the_models_pretraining() -> None:
    """vit uses 0.5 mean/std at 224: left null, the spec takes those; given, params win."""
    from carinspect.config import ModelConfig
    from carinspect.contracts.preprocess import PreprocessSpec

    own = PreprocessSpec.from_model(
        ModelConfig(name="vit_tiny_patch16_224", img_size=None, mean=None, std=None)
    )
    assert (own.img_size, own.mean, own.std) == (224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    given = PreprocessSpec.from_model(ModelConfig(name="vit_tiny_patch16_224", img_size=64))
    assert (given.img_size, given.mean) == (64, (0.485, 0.456, 0.406))
