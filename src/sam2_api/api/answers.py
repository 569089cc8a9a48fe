"""A request error as every caller sees it: ``{"error": "<what is wrong>"}`` with the error's HTTP
status. The routes answer theirs through :func:`answers_request_errors`, the middlewares write the
same body (:func:`error_body`)."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable

from starlette.responses import JSONResponse

from ..errors import RequestError


def error_body(exc: RequestError, with_message: bool = False) -> dict[str, str]:
    """The one shape of an error answer; ``with_message``: the same words as ``message`` too, which
    Roboflow's clients show (inference-sdk's ``api_message``), on Roboflow's routes."""
    return {"error": str(exc), "message": str(exc)} if with_message else {"error": str(exc)}


def error_response(ctx: Any, exc: RequestError, with_message: bool = False) -> JSONResponse:
    """``exc`` as a response of a BentoML route (BentoML would hide a 403's message). The status goes
    on the route's context too: BentoML sets it on any response of an API that takes one."""
    ctx.response.status_code = exc.status
    return JSONResponse(error_body(exc, with_message), status_code=exc.status)


def answers_request_errors(route: Callable[..., Any] | None = None, *,
                           with_message: bool = False) -> Callable[..., Any]:
    """``route`` (a BentoML API method with a ``ctx`` parameter) answering the :class:`RequestError`
    it raises as :func:`error_response`. ``functools.wraps`` keeps its signature, module and
    annotations, from which BentoML builds the route's fields and OpenAPI document. Used bare, or as
    ``@answers_request_errors(with_message=True)``."""
    if route is None:
        return functools.partial(answers_request_errors, with_message=with_message)
    signature = inspect.signature(route)

    @functools.wraps(route)
    def answered(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except RequestError as exc:
            return error_response(signature.bind_partial(*args, **kwargs).arguments["ctx"], exc, with_message)

    return answered
