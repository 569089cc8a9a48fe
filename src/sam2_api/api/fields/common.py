"""What every route's fields share: one way to quote a bad value in a message, one parser for a
true/false field, one for ``formats``, and the ``model`` field (resolved by ``Settings.model_for``)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, WithJsonSchema

from ...errors import InvalidField

# The model size a request asks for; ``Settings.model_for`` turns it into a served id or a 400.
ModelField = Annotated[Any, WithJsonSchema({"type": "string"}), Field(
    description="The SAM 2.1 size to use, among those this server serves (SAM2_MODELS): an id such as "
    "`facebook/sam2.1-hiera-small` or a short name (`hiera_tiny`, `hiera_small`, `hiera_b_plus`, `hiera_large`, "
    "or `tiny`, `small`, `base_plus`, `large`); default: the server's default size. An `image_id` or "
    "`previous_mask_id` belongs to the size it was made with. 400 naming the served sizes for any other.",
    examples=["hiera_small"],
)]


def shown(value: Any, limit: int = 60) -> str:
    """``value`` as a message quotes it: its repr, cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def parse_flag(value: Any, name: str, default: bool | None = None) -> bool | None:
    """A true/false field: JSON's ``true`` or ``false``; ``default`` when it is left out (None)."""
    if value is None:
        return default
    if not isinstance(value, bool):
        raise InvalidField(f"`{name}` must be true or false; got {shown(value)}")
    return value


def parse_formats(value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """``formats``: a list of ``allowed`` names (or one name, or names separated by commas, as a form
    field is easily typed), each once, in ``allowed``'s order; none by default."""
    if value is None:
        return ()
    names = value.split(",") if isinstance(value, str) else value
    if isinstance(names, list) and all(isinstance(name, str) and name.strip() in allowed for name in names):
        chosen = {name.strip() for name in names}
        return tuple(name for name in allowed if name in chosen)
    choices = " and/or ".join(f'"{name}"' for name in allowed)
    raise InvalidField(f'`formats` must be a list of {choices}, e.g. ["rle"]; got {shown(value)}')
