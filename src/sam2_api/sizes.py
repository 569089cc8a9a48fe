"""Which SAM 2.1 size a request asks for: the names a client may use, and the served one they mean.

One size has three accepted names: our (Hugging Face) id ``facebook/sam2.1-hiera-tiny``, the short
name Roboflow's ``sam2_version_id`` uses (``hiera_tiny``, ``hiera_small``, ``hiera_b_plus``,
``hiera_large``) and the bare size (``tiny``, ``small``, ``base_plus``, ``large``). Everything past
the request's field speaks the id. Torch-free: the API service resolves names before any call, and
the model service checks them again with the same function.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InvalidField

MODEL_IDS = (
    "facebook/sam2.1-hiera-tiny",
    "facebook/sam2.1-hiera-small",
    "facebook/sam2.1-hiera-base-plus",
    "facebook/sam2.1-hiera-large",
)
# id -> the other names of that size
ALIASES: dict[str, tuple[str, ...]] = {
    "facebook/sam2.1-hiera-tiny": ("hiera_tiny", "tiny"),
    "facebook/sam2.1-hiera-small": ("hiera_small", "small"),
    "facebook/sam2.1-hiera-base-plus": ("hiera_b_plus", "base_plus", "b_plus"),
    "facebook/sam2.1-hiera-large": ("hiera_large", "large"),
}
assert set(ALIASES) == set(MODEL_IDS)
_IDS = {name: model_id for model_id, names in ALIASES.items() for name in (model_id, *names)}


def model_id(name: str) -> str | None:
    """The id a name means (any of its spellings, any case, spaces around ignored), or None."""
    return _IDS.get(name.strip().lower()) if isinstance(name, str) else None


def short_name(model_id: str) -> str:
    """``hiera_tiny`` for ``facebook/sam2.1-hiera-tiny``: Roboflow's name, one without ``/``."""
    return ALIASES[model_id][0]


def served_model(name: object, served: tuple[str, ...], default: str, field: str = "model") -> str:
    """The served id a request's ``model`` (the request's ``field``) names: ``default`` when it is left out
    (None or ""); :class:`InvalidField` (400) naming the served ones when it is not a SAM 2.1 size or not
    served here."""
    if name is None or name == "":
        return default
    found = model_id(name) if isinstance(name, str) else None
    if found is None or found not in served:
        listed = ", ".join(f"{short_name(m)} ({m})" for m in served)
        what = "is not a SAM 2.1 size" if found is None else "is not served here"
        raise InvalidField(f"`{field}` {name!r} {what}; this server serves: {listed}")
    return found


def parse_sizes(text: str) -> tuple[str, ...]:
    """SAM2_MODELS: comma-separated names → their ids, each once, in order (ValueError naming the unknown)."""
    names = [name for name in text.split(",") if name.strip()]
    unknown = [name.strip() for name in names if model_id(name) is None]
    if unknown or not names:
        raise ValueError(f"SAM2_MODELS must list SAM 2.1 sizes, as ids ({', '.join(MODEL_IDS)}) or short names "
                         f"(hiera_tiny, small, …); got {', '.join(map(repr, unknown)) or 'none'}")
    return tuple(dict.fromkeys(model_id(name) for name in names))


def parse_checkpoints(text: str | None) -> dict[str, Path]:
    """SAM2_CHECKPOINTS: comma-separated ``size=path`` → path by id (ValueError naming a bad entry)."""
    files = {}
    for entry in filter(str.strip, (text or "").split(",")):
        name, sep, path = entry.partition("=")
        if not sep or model_id(name) is None:
            raise ValueError(f"SAM2_CHECKPOINTS entries are size=path (e.g. hiera_small=/ckpt/small.pt); got {entry.strip()!r}")
        if not Path(path.strip()).is_file():
            raise ValueError(f"SAM2_CHECKPOINTS: {path.strip()} is not a file")
        files[model_id(name)] = Path(path.strip())
    return files
