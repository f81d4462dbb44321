"""The flagged-output queue: served answers flagged by a user (POST /v1/feedback) or by a
monitoring check, one at a time, oldest first, for a reviewer to accept (the proposed
correction as it is, edited, or written from scratch) or reject.

The queue is shared: a decision (`ftray.monitor.feedback.decide`) takes the item out of it for
every reviewer, and accepted outputs are what the next dataset version adds.
"""

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from ftray.errors import UserError
from ftray.monitor import feedback
from ftray.review import pages
from ftray.review.http import Reviewers, form_fields, prefix
from ftray.store import Store

DECISIONS = ("accept", "reject")
# A corrected output becomes a training completion; bound what one form post can add.
OUTPUT_LIMIT = 20_000


class FlaggedQueue:
    """A project's flagged feedback awaiting a decision, and the routes that decide it."""

    title = "Flagged outputs: accept, correct or reject"
    path = "/flagged"
    progress_label = "decided"

    def __init__(self, store: Store):
        self.store = store

    def state(self) -> tuple[list[dict], dict[str, dict]]:
        """(flagged feedback oldest first, the latest decision per feedback id), read once per
        request: every feedback and decision is a file, and storage may be remote."""
        flagged = [f for f in feedback.all_feedback(self.store) if feedback.is_flagged(f)]
        return flagged, feedback.decisions(self.store)

    def progress(self, reviewer: str) -> tuple[int, int]:
        """(flagged outputs decided by anyone, flagged outputs in all): the queue is shared."""
        flagged, decided = self.state()
        return len(flagged) - len(_waiting(flagged, decided)), len(flagged)

    def router(self, reviewers: Reviewers) -> APIRouter:
        """The queue's routes, each for the reviewer `reviewers` finds in the request."""
        routes = APIRouter()
        signed_in = Depends(reviewers)

        @routes.get(self.path)
        async def next_flagged(request: Request, reviewer: str = signed_in) -> Response:
            flagged, decided = await run_in_threadpool(self.state)
            waiting = _waiting(flagged, decided)
            if waiting:
                target = f"{prefix(request)}{self.path}/{waiting[0]}"
                return RedirectResponse(target, status_code=303)
            return HTMLResponse(pages.flagged_empty_page(prefix(request), reviewer, len(flagged)))

        @routes.get(self.path + "/{feedback_id}")
        async def show(request: Request, feedback_id: str, reviewer: str = signed_in) -> Response:
            flagged, decided = await run_in_threadpool(self.state)
            item = next((f for f in flagged if f["feedback_id"] == feedback_id), None)
            if item is None:
                return self._unknown(request, feedback_id, reviewer)
            if feedback_id in decided:
                return self._decided(request, decided[feedback_id], reviewer, status=200)
            waiting = _waiting(flagged, decided)
            place = waiting.index(feedback_id)
            later = waiting[place + 1 :] + waiting[:place]
            html = pages.flagged_page(
                prefix(request),
                reviewer,
                item,
                (place + 1, len(waiting), len(flagged) - len(waiting), len(flagged)),
                later[0] if later else None,
            )
            return HTMLResponse(html)

        @routes.post(self.path + "/{feedback_id}")
        async def decide(request: Request, feedback_id: str, reviewer: str = signed_in) -> Response:
            flagged, decided = await run_in_threadpool(self.state)
            if all(f["feedback_id"] != feedback_id for f in flagged):
                return self._unknown(request, feedback_id, reviewer)
            if feedback_id in decided:
                # Another reviewer was first; keep their decision rather than overwrite it.
                return self._decided(request, decided[feedback_id], reviewer, status=409)
            form = await form_fields(request)
            choice = form.get("decision", "")
            # Browsers send a textarea's line breaks as CRLF; the dataset keeps plain newlines.
            output = form.get("output", "").replace("\r\n", "\n")
            problem = None
            if choice not in DECISIONS:
                problem = f"decision {choice!r} is not one of {', '.join(DECISIONS)}"
            elif choice == "accept" and not output.strip():
                problem = (
                    "accepting needs a corrected output: write the right answer in the box, "
                    "or reject the flag"
                )
            elif len(output) > OUTPUT_LIMIT:
                problem = f"the corrected output is longer than {OUTPUT_LIMIT} characters"
            if problem is None:
                try:
                    await run_in_threadpool(
                        feedback.decide,
                        self.store,
                        feedback_id,
                        choice,
                        by=reviewer,
                        output=output if choice == "accept" else None,
                    )
                except UserError as err:  # its own rules reach the reviewer as a 400
                    problem = str(err)
            if problem:
                text = pages.message_page(prefix(request), "Not saved", problem, reviewer)
                return HTMLResponse(text, status_code=400)
            return RedirectResponse(prefix(request) + self.path, status_code=303)

        return routes

    def _unknown(self, request: Request, feedback_id: str, reviewer: str) -> Response:
        text = f"no flagged output {feedback_id!r} in this project"
        html = pages.message_page(prefix(request), "No such flagged output", text, reviewer)
        return HTMLResponse(html, status_code=404)

    def _decided(self, request: Request, decision: dict, reviewer: str, status: int) -> Response:
        text = (
            f"{decision['feedback_id']} was already decided ({decision['decision']}) by "
            f"{decision['by']} at {decision['at']}; it has left the queue"
        )
        html = pages.message_page(prefix(request), "Already decided", text, reviewer)
        return HTMLResponse(html, status_code=status)


def _waiting(flagged: list[dict], decided: dict[str, dict]) -> list[str]:
    """The ids of flagged feedback with no decision yet, oldest first (`feedback.pending`)."""
    return [f["feedback_id"] for f in flagged if f["feedback_id"] not in decided]
