"""The pairwise-preference queue: per reviewer, every pair of a source (an evaluation's, or a
shadow model's recorded pairs) in a shuffled order, the candidate on a random side (A or B)
per item, four choices and a comment.

A reviewer only ever sees their own ratings: nothing on these pages depends on anyone else's.
A shadow's pairs keep arriving while reviewers rate, so each request reads the source again
(`ShadowPairs` reads only the sample files written since).
"""

from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ftray.review import pages
from ftray.review.http import Reviewers, form_fields, prefix
from ftray.review.ratings import (
    CHOICES,
    COMMENT_LIMIT,
    Item,
    Pair,
    PairSource,
    RatingLog,
    candidate_side,
    latest,
    reviewer_order,
)
from ftray.store import Store


class PairwiseQueue:
    """A source's pairs and ratings, and the routes that show and rate them."""

    path = "/pairwise"
    progress_label = "rated by you"

    def __init__(self, store: Store, source: PairSource):
        self.source = source
        self.title = f"Pairwise preference: {source.arms[0]} vs {source.arms[1]}"
        self.log = RatingLog(store, source)
        source.pairs()  # no evaluation, no recorded pairs: the error now, not on a page

    def state(self, reviewer: str) -> tuple[dict[str, Pair], list[Item], dict[Item, dict]]:
        """(the pairs by item as a URL names them, this reviewer's order of the items, their
        latest rating per item), read once per request."""
        pairs = {str(pair.item): pair for pair in self.source.pairs()}
        order = reviewer_order(self.source.key, reviewer, [p.item for p in pairs.values()])
        mine = {r["item"]: r for r in latest(self.log.all()) if r["reviewer"] == reviewer}
        return pairs, order, mine

    def progress(self, reviewer: str) -> tuple[int, int]:
        """(items this reviewer rated, items in the queue)."""
        _, order, mine = self.state(reviewer)
        return sum(item in mine for item in order), len(order)

    def router(self, reviewers: Reviewers) -> APIRouter:
        """The queue's routes, each for the reviewer `reviewers` finds in the request."""
        routes = APIRouter()
        signed_in = Depends(reviewers)

        @routes.get(self.path)
        async def next_pair(request: Request, reviewer: str = signed_in) -> Response:
            _, order, mine = await run_in_threadpool(self.state, reviewer)
            todo = [item for item in order if item not in mine]
            target = f"/pairwise/{quote(str(todo[0]), safe='')}" if todo else "/pairwise/done"
            return RedirectResponse(prefix(request) + target, status_code=303)

        @routes.get(self.path + "/done")
        async def own_ratings(request: Request, reviewer: str = signed_in) -> Response:
            _, order, mine = await run_in_threadpool(self.state, reviewer)
            ratings = sorted((mine[i] for i in order if i in mine), key=lambda r: r["position"])
            return HTMLResponse(pages.done_page(prefix(request), reviewer, len(order), ratings))

        @routes.get(self.path + "/{item}")
        async def show(request: Request, item: str, reviewer: str = signed_in) -> Response:
            pairs, order, mine = await run_in_threadpool(self.state, reviewer)
            if item not in pairs:
                return self._unknown(request, item, reviewer, len(pairs))
            pair = pairs[item]
            place = order.index(pair.item)
            later = order[place + 1 :] + order[:place]
            html = pages.pair_page(
                prefix(request),
                reviewer,
                pair,
                candidate_side(self.source.key, pair.item, reviewer),
                (place + 1, sum(i in mine for i in order), len(order)),
                mine.get(pair.item),
                next((i for i in later if i not in mine), None),
            )
            return HTMLResponse(html)

        @routes.post(self.path + "/{item}")
        async def rate(request: Request, item: str, reviewer: str = signed_in) -> Response:
            pairs, order, _ = await run_in_threadpool(self.state, reviewer)
            if item not in pairs:
                return self._unknown(request, item, reviewer, len(pairs))
            pair = pairs[item]
            form = await form_fields(request)
            choice, comment = form.get("choice", ""), form.get("comment", "").strip()
            problem = None
            if choice not in CHOICES:
                problem = f"choice {choice!r} is not one of {', '.join(CHOICES)}"
            elif len(comment) > COMMENT_LIMIT:
                problem = f"the comment is longer than {COMMENT_LIMIT} characters"
            if problem:
                text = pages.message_page(prefix(request), "Not saved", problem, reviewer)
                return HTMLResponse(text, status_code=400)
            position = order.index(pair.item) + 1
            await run_in_threadpool(self.log.add, pair, reviewer, choice, comment, position)
            return RedirectResponse(prefix(request) + self.path, status_code=303)

        return routes

    def _unknown(self, request: Request, item: str, reviewer: str, total: int) -> Response:
        text = f"no pair {item!r} in {self.source.what} ({total} pairs to review)"
        html = pages.message_page(prefix(request), "No such pair", text, reviewer)
        return HTMLResponse(html, status_code=404)
