"""FastAPI app: GET /health and POST /count."""

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from . import __version__
from .counting import count, max_words


class CountRequest(BaseModel):
    text: str
    top: int = 3


def create_app() -> FastAPI:
    api = FastAPI(title="wordcount-api", version=__version__)

    @api.get("/health")
    def health() -> dict:
        return {"status": "ok", "version": __version__, "max_words": max_words()}

    @api.post("/count")
    def do_count(req: CountRequest) -> dict:
        try:
            return count(req.text, req.top)
        except ValueError as exc:
            raise HTTPException(status_code=413, detail=str(exc)) from exc

    return api
