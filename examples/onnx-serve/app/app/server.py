"""FastAPI app: GET /health and POST /predict."""

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from . import __version__
from .infer import load_session, predict


class PredictRequest(BaseModel):
    x: list[list[float]]


class PredictResponse(BaseModel):
    y: list[list[float]]


def create_app(model_path: str, provider: str = "cpu") -> FastAPI:
    # Load once at startup so requests don't pay the session creation cost.
    session = load_session(model_path, provider)
    api = FastAPI(title="onnx-serve", version=__version__)

    @api.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": __version__, "provider": session.get_providers()[0]}

    @api.post("/predict")
    def do_predict(req: PredictRequest) -> PredictResponse:
        try:
            return PredictResponse(y=predict(session, req.x))
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    return api
