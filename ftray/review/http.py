"""What every review page needs from a request: who the reviewer is, where the app is mounted,
and the fields of a plain HTML form.

A reviewer is known by a token, taken from `Authorization: Bearer <token>`, `?token=<token>`
(which the app turns into a cookie) or the cookie set when signing in. In an open app (the
default, bound to 127.0.0.1) the token is the reviewer's name; started with a token list,
only listed tokens get in, each standing for one reviewer's name.
"""

import re
from urllib.parse import parse_qs

from fastapi import Request

from ftray.errors import UserError

COOKIE = "ftray_reviewer"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class NotSignedIn(Exception):
    """A page asked for a reviewer and the request named none (or an unknown token)."""


class Reviewers:
    """Tokens to reviewer names; a FastAPI dependency that gives the request's reviewer."""

    def __init__(self, tokens: dict[str, str] | None = None):
        self.tokens = tokens

    @classmethod
    def from_names(cls, names_to_tokens: dict) -> "Reviewers":
        """From a mapping of reviewer name → token (the `--tokens` YAML file)."""
        problems = [f"{n!r} is not a valid name" for n in names_to_tokens if not NAME.match(str(n))]
        tokens = [str(t) for t in names_to_tokens.values()]
        if len(set(tokens)) != len(tokens):
            problems.append("two reviewers share a token")
        if any(len(t) < 8 for t in tokens):
            problems.append("a token is shorter than 8 characters")
        if problems or not tokens:
            raise UserError(
                "the reviewer tokens file is not usable: "
                + ("; ".join(problems) or "it lists no reviewer")
                + ". Write one `name: token` line per reviewer (tokens of 8+ characters)."
            )
        return cls({str(t): str(n) for n, t in names_to_tokens.items()})

    def name(self, token: str | None) -> str | None:
        """The reviewer a token stands for, or None."""
        if not token:
            return None
        if self.tokens is not None:
            return self.tokens.get(token)
        return token if NAME.match(token) else None

    def __call__(self, request: Request) -> str:
        name = self.name(request_token(request))
        if name is None:
            raise NotSignedIn()
        return name


def request_token(request: Request) -> str | None:
    """The token a request carries, the header first."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token") or request.cookies.get(COOKIE)


def prefix(request: Request) -> str:
    """Where the app is mounted (e.g. '/review' inside the Serve app), for links."""
    return request.scope.get("root_path", "").rstrip("/")


async def form_fields(request: Request) -> dict[str, str]:
    """A urlencoded form body (what plain HTML forms send), first value per field."""
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}
