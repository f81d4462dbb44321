"""The pairwise-preference queue: per reviewer, every pair of an evaluation in a shuffled
order, the candidate on a random side (A or B) per item, four choices and a comment.

A reviewer only ever sees their own ratings: nothing on these pages depends on anyone else's.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ftray.review import pages
from ftray.review.http import Reviewers, form_fields, prefix
from ftray.review.ratings import (
    CHOICES,
    COMMENT_LIMIT,
    RatingLog,
    candidate_side,
    latest,
    load_pairs,
    reviewer_order,
)
from ftray.store import Store


class PairwiseQueue:
    """One evaluation's pairs and ratings, and the routes that show and rate them."""

    title = "Pairwise preference: candidate vs incumbent"
    path = "/pairwise"
    progress_label = "rated by you"

    def __init__(self, store: Store, eval_id: str):
        self.eval_id = eval_id
        self.pairs = load_pairs(store, eval_id)
        self.log = RatingLog(store, eval_id)

    def mine(self, reviewer: str) -> dict[int, dict]:
        """This reviewer's latest rating per item."""
        return {r["item"]: r for r in latest(self.log.all()) if r["reviewer"] == reviewer}

    def progress(self, reviewer: str) -> tuple[int, int]:
        """(items this reviewer rated, items in the queue)."""
        return len(self.mine(reviewer)), len(self.pairs)

    def router(self, reviewers: Reviewers) -> APIRouter:
        """The queue's routes, each for the reviewer `reviewers` finds in the request."""
        routes = APIRouter()
        signed_in = Depends(reviewers)

        @routes.get(self.path)
        async def next_pair(request: Request, reviewer: str = signed_in) -> Response:
            mine = await run_in_threadpool(self.mine, reviewer)
            order = reviewer_order(self.eval_id, reviewer, len(self.pairs))
            todo = [item for item in order if item not in mine]
            target = f"/pairwise/{todo[0]}" if todo else "/pairwise/done"
            return RedirectResponse(prefix(request) + target, status_code=303)

        @routes.get(self.path + "/done")
        async def own_ratings(request: Request, reviewer: str = signed_in) -> Response:
            mine = await run_in_threadpool(self.mine, reviewer)
            ratings = sorted(mine.values(), key=lambda r: r["position"])
            return HTMLResponse(
                pages.done_page(prefix(request), reviewer, len(self.pairs), ratings)
            )

        @routes.get(self.path + "/{item}")
        async def show(request: Request, item: str, reviewer: str = signed_in) -> Response:
            pair = self._pair(item)
            if pair is None:
                return self._unknown(request, item, reviewer)
            mine = await run_in_threadpool(self.mine, reviewer)
            order = reviewer_order(self.eval_id, reviewer, len(self.pairs))
            place = order.index(pair.item)
            later = order[place + 1 :] + order[:place]
            skip = next((i for i in later if i not in mine), None)
            html = pages.pair_page(
                prefix(request),
                reviewer,
                pair,
                candidate_side(self.eval_id, pair.item, reviewer),
                (place + 1, len(mine), len(self.pairs)),
                mine.get(pair.item),
                skip,
            )
            return HTMLResponse(html)

        @routes.post(self.path + "/{item}")
        async def rate(request: Request, item: str, reviewer: str = signed_in) -> Response:
            pair = self._pair(item)
            if pair is None:
                return self._unknown(request, item, reviewer)
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
            order = reviewer_order(self.eval_id, reviewer, len(self.pairs))
            position = order.index(pair.item) + 1
            await run_in_threadpool(self.log.add, pair, reviewer, choice, comment, position)
            return RedirectResponse(prefix(request) + self.path, status_code=303)

        return routes

    def _pair(self, item: str):
        return self.pairs[int(item)] if item.isdigit() and int(item) < len(self.pairs) else None

    def _unknown(self, request: Request, item: str, reviewer: str) -> Response:
        text = f"no pair {item!r} in evaluation {self.eval_id} (items 0 to {len(self.pairs) - 1})"
        html = pages.message_page(prefix(request), "No such pair", text, reviewer)
        return HTMLResponse(html, status_code=404)
