"""Several SAM 2.1 sizes in one model service (SAM2_MODELS): each size's masks are its own
predictor's, the caches keep sizes apart, names resolve to served sizes or a 400 naming them, and
sizes beyond the memory budget are unloaded least recently used first."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sam2_api import errors
from sam2_api.config import Settings
from sam2_api.imaging import unpack_mask
from sam2_api.messages import RawImage, scoped_key
from sam2_api.model.model_set import ModelSet, build_models
from sam2_api.prompts import Prompt
from sam2_api.sizes import served_model
from tests.conftest import upright_rgb

TINY, SMALL = "facebook/sam2.1-hiera-tiny", "facebook/sam2.1-hiera-small"
KEY = scoped_key("0123456789abcdef", "id:chelsea")
CLICK = [[230.0, 160.0]]


@pytest.fixture(scope="module")
def sizes(checkpoint, small_checkpoint) -> ModelSet:
    return build_models(Settings(sam2_checkpoint=checkpoint, sam2_models="hiera_tiny,small", sam2_device="cpu",
                                 sam2_checkpoints=f"hiera_small={small_checkpoint}"), packaged={})


@pytest.fixture(scope="module")
def image(test_images) -> np.ndarray:
    return upright_rgb(test_images / "chelsea.png")


def mask_of(reply) -> np.ndarray:
    assert reply.failure is None, reply.failure
    return unpack_mask(reply.masks[0].bits, reply.height, reply.width)


def test_each_size_answers_exactly_its_own_predictor(sizes, image, reference_mask, small_reference_mask):
    assert sizes.loaded == (TINY,)  # the default at start-up; small on first use
    tiny = mask_of(sizes.predict(KEY, [Prompt(points=CLICK)], RawImage(pixels=image)))
    small = mask_of(sizes.predict(KEY, [Prompt(points=CLICK)], RawImage(pixels=image), model=SMALL))
    assert sizes.loaded == (TINY, SMALL)
    assert np.array_equal(tiny, reference_mask(image, points=CLICK)[0])
    assert np.array_equal(small, small_reference_mask(image, points=CLICK)[0])
    assert not np.array_equal(tiny, small)  # two sizes, two different answers: the test can tell them apart
    box = [40.0, 30.0, 300.0, 250.0]
    assert np.array_equal(mask_of(sizes.predict(KEY, [Prompt(box=box)], model="hiera_small")),
                          small_reference_mask(image, box=box)[0])


def test_an_image_cached_for_one_size_is_unknown_to_another(sizes, image):
    key = scoped_key(None, "id:only-tiny")
    assert sizes.predict(key, [Prompt(points=CLICK)], RawImage(pixels=image)).failure is None
    assert sizes.predict(key, [Prompt(points=CLICK)]).cached  # tiny has it
    assert sizes.predict(key, [Prompt(points=CLICK)], model=SMALL).needs_image  # small does not: the API says 404


def test_a_mask_of_one_size_is_not_refined_by_another(sizes, image):
    first = sizes.predict(KEY, [Prompt(points=CLICK)], RawImage(pixels=image))
    again = Prompt(points=[*CLICK, [100.0, 100.0]], labels=[1, 0], previous_mask_id=first.masks[0].mask_id)
    reply = sizes.predict(KEY, [again], model=SMALL)
    assert reply.failure.kind == "MaskIdOfAnotherImage" and reply.failure.error().status == 400
    assert "made by model hiera_tiny, not hiera_small" in reply.failure.message
    assert sizes.predict(KEY, [again]).failure is None  # with its own size it refines


@pytest.mark.parametrize("name, why", [("hiera_large", "is not served here"), ("huge", "is not a SAM 2.1 size"),
                                       (3, "is not a SAM 2.1 size")])
def test_a_size_not_served_is_a_400_naming_the_served_ones(sizes, name, why):
    reply = sizes.predict(KEY, [Prompt(points=CLICK)], model=name)
    assert reply.failure.kind == "InvalidField" and reply.failure.error().status == 400
    assert reply.failure.message == (f"`model` {name!r} {why}; this server serves: hiera_tiny "
                                     "(facebook/sam2.1-hiera-tiny), hiera_small (facebook/sam2.1-hiera-small)")


def test_every_spelling_of_a_size_names_it():
    served = (TINY, SMALL)
    for name in (SMALL, "hiera_small", "small", " Small ", "HIERA_SMALL"):
        assert served_model(name, served, TINY) == SMALL
    assert served_model(None, served, TINY) == served_model("", served, TINY) == TINY
    with pytest.raises(errors.InvalidField):
        served_model("facebook/sam2-hiera-small", served, TINY)  # SAM 2.0's weights: not ours


class Loaded:
    """A loaded size as ModelSet keeps it: its id and its weights' bytes."""

    def __init__(self, model_id: str, nbytes: int) -> None:
        self.model_id, self.nbytes = model_id, nbytes


def test_sizes_past_the_budget_are_unloaded_least_recently_used_first_never_the_default():
    weights = {TINY: 156, SMALL: 184, "facebook/sam2.1-hiera-base-plus": 324, "facebook/sam2.1-hiera-large": 898}
    loads = []

    def load(model_id: str) -> Loaded:
        loads.append(model_id)
        return Loaded(model_id, weights[model_id])

    sizes = ModelSet(tuple(weights), Loaded(TINY, 156), load, max_bytes=156 + 184 + 324)
    sizes.get("small"), sizes.get("base_plus")
    assert sizes.loaded == (TINY, SMALL, "facebook/sam2.1-hiera-base-plus")  # within the budget: all kept
    sizes.get("small")  # now base-plus is the least recently used
    sizes.get("large")  # 898 more: out go base-plus, then small; tiny is the default, large the one asked for
    assert sizes.loaded == (TINY, "facebook/sam2.1-hiera-large")
    assert sizes.get("small").model_id == SMALL and loads == [SMALL, "facebook/sam2.1-hiera-base-plus",
                                                              "facebook/sam2.1-hiera-large", SMALL]
    assert sizes.loaded == (TINY, SMALL)  # large out: it was used before small's return


def test_callers_racing_for_a_new_size_load_it_once():
    started, release = threading.Event(), threading.Event()
    loads = []

    def load(model_id: str) -> Loaded:
        loads.append(model_id)
        started.set()
        release.wait(5)
        return Loaded(model_id, 1)

    sizes = ModelSet((TINY, SMALL), Loaded(TINY, 1), load, max_bytes=10)
    got = []
    callers = [threading.Thread(target=lambda: got.append(sizes.get("small"))) for _ in range(4)]
    for caller in callers:
        caller.start()
    assert started.wait(5)
    assert sizes.get(None).model_id == TINY  # the default serves while small loads
    release.set()
    for caller in callers:
        caller.join(5)
    assert loads == [SMALL] and len(got) == 4 and all(size is got[0] for size in got)


def test_a_size_that_cannot_be_loaded_is_a_503_saying_why():
    def load(model_id: str) -> Loaded:
        raise errors.ModelLoadError("could not fetch facebook/sam2.1-hiera-small from Hugging Face (offline)")

    sizes = ModelSet((TINY, SMALL), Loaded(TINY, 1), load, max_bytes=10)
    with pytest.raises(errors.ModelUnavailable, match="model facebook/sam2.1-hiera-small could not be loaded: "
                                                       "could not fetch"):
        sizes.get("small")
    assert sizes.loaded == (TINY,)


def test_the_settings_name_the_sizes_and_their_files_or_say_what_is_wrong(tmp_path):
    small_file = tmp_path / "small.pt"
    small_file.write_bytes(b"")
    settings = Settings(sam2_models="small, hiera_tiny,facebook/sam2.1-hiera-small",
                        sam2_checkpoints=f"hiera_small={small_file}")
    assert settings.served_models == (SMALL, TINY) and settings.default_model == TINY  # SAM2_MODEL is listed
    assert settings.checkpoints == {SMALL: small_file} and settings.model_for(None) == TINY
    assert Settings(sam2_models="small,large").default_model == SMALL  # SAM2_MODEL not listed: the first
    assert Settings().served_models == (TINY,)  # unset: SAM2_MODEL alone
    for bad, words in [({"sam2_models": "tiny,huge"}, "SAM2_MODELS must list SAM 2.1 sizes"),
                       ({"sam2_models": " , "}, "SAM2_MODELS must list SAM 2.1 sizes"),
                       ({"sam2_checkpoints": f"{small_file}"}, "SAM2_CHECKPOINTS entries are size=path"),
                       ({"sam2_checkpoints": f"small={tmp_path / 'none.pt'}"}, "none.pt is not a file"),
                       ({"sam2_checkpoint": small_file, "sam2_models": "small,large"},
                        "SAM2_CHECKPOINT is the checkpoint of SAM2_MODEL=facebook/sam2.1-hiera-tiny")]:
        with pytest.raises(ValueError, match=words):
            Settings(**bad)
