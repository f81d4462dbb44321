"""The review web app: sign-in, the list of queues with their progress, and each queue's
pages: pairwise preference for an evaluation or a shadow model's recorded pairs (`pairwise`)
and flagged production outputs (`flagged`). A queue is a class with `title`, `path`,
`progress_label`, `progress(reviewer)` and `router(reviewers)`, so another one mounts the same
way.

`build_app` returns a plain FastAPI app: `ftray review` serves it with uvicorn, and since its
links follow the mount point it also runs as a route of another app, e.g.
`api.mount("/review", build_app(store, eval_id))` in the Serve app.
Without an evaluation or a shadow (both None) only the flagged queue is served.
"""

from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ftray.errors import UserError
from ftray.review import pages
from ftray.review.flagged import FlaggedQueue
from ftray.review.http import COOKIE, NotSignedIn, Reviewers, form_fields, prefix
from ftray.review.pairwise import PairwiseQueue
from ftray.review.ratings import EvalPairs, PairSource
from ftray.review.shadow_pairs import ShadowPairs
from ftray.store import Store

# Nothing may come from elsewhere (no CDN, no scripts), and the pages are one reviewer's own:
# no caching in shared browsers or proxies.
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}
NAME_RULE = "a name is 1 to 64 letters, digits or . _ @ - and starts with a letter or digit"


def build_app(
    store: Store,
    eval_id: str | None = None,
    reviewers: Reviewers | None = None,
    *,
    shadow: str | None = None,
) -> FastAPI:
    """The review app for a project and the pairs of one of its evaluations or of shadow model
    `shadow` (neither: only the flagged queue); `reviewers` None lets anyone in by name."""
    if eval_id is not None and shadow is not None:
        raise UserError("review an evaluation's pairs or a shadow model's, not both")
    reviewers = reviewers or Reviewers()
    signed_in = Depends(reviewers)
    source: PairSource | None = ShadowPairs(store, shadow) if shadow is not None else None
    if eval_id is not None:
        source = EvalPairs(store, eval_id)
    queues: list[PairwiseQueue | FlaggedQueue] = []
    if source is not None:
        queues.append(PairwiseQueue(store, source))
    queues.append(FlaggedQueue(store))
    app = FastAPI(title="ftray review", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def headers_and_token_links(request: Request, call_next) -> Response:
        token = request.query_params.get("token")
        if request.method == "GET" and token and reviewers.name(token):
            # A link with ?token= signs the reviewer in, then leaves the address bar clean.
            query = urlencode([kv for kv in request.query_params.multi_items() if kv[0] != "token"])
            target = request.url.path + (f"?{query}" if query else "")
            response = RedirectResponse(target, status_code=303)
            _set_cookie(response, request, token)
        else:
            response = await call_next(request)
        response.headers.update(HEADERS)
        return response

    @app.exception_handler(NotSignedIn)
    async def sign_in_first(request: Request, _: NotSignedIn) -> Response:
        if request.method == "GET":
            back = quote(request.url.path)
            return RedirectResponse(f"{prefix(request)}/login?next={back}", status_code=303)
        text = "sign in first: a name, `?token=`, or `Authorization: Bearer <token>`"
        return HTMLResponse(pages.message_page(prefix(request), "Not signed in", text), 401)

    @app.get("/login")
    async def login_form(request: Request, next: str = "") -> Response:
        html = pages.login_page(prefix(request), next, None, reviewers.tokens is not None)
        return HTMLResponse(html)

    @app.post("/login")
    async def login(request: Request) -> Response:
        form = await form_fields(request)
        token = form.get("token", "").strip()
        next_path = form.get("next", "")
        if not next_path.startswith(prefix(request) + "/") or next_path.startswith("//"):
            next_path = prefix(request) + "/"  # only pages of this app, never another site
        if reviewers.name(token) is None:
            tokens = reviewers.tokens is not None
            problem = "unknown token" if tokens else NAME_RULE
            html = pages.login_page(prefix(request), next_path, problem, tokens)
            return HTMLResponse(html, status_code=401)
        response = RedirectResponse(next_path, status_code=303)
        _set_cookie(response, request, token)
        return response

    @app.post("/logout")
    async def logout(request: Request) -> Response:
        response = RedirectResponse(f"{prefix(request)}/login", status_code=303)
        response.delete_cookie(COOKIE, path=prefix(request) or "/")
        return response

    @app.get("/")
    async def index(request: Request, reviewer: str = signed_in) -> Response:
        rows = []
        for queue in queues:
            done, total = await run_in_threadpool(queue.progress, reviewer)
            rows.append((queue.title, queue.path, queue.progress_label, done, total))
        what = source.what if source is not None else None
        return HTMLResponse(pages.index_page(prefix(request), reviewer, what, rows))

    for queue in queues:
        app.include_router(queue.router(reviewers))
    return app


def _set_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        COOKIE,
        token,
        path=prefix(request) or "/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        max_age=30 * 24 * 3600,
    )
