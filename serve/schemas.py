"""The API's request and response bodies (pydantic), from which FastAPI publishes the OpenAPI schema."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Point = Annotated[list[float], Field(min_length=2, max_length=2, description="(x, y) in pixels of the uploaded image")]


class PredictRequest(BaseModel):
    """Prompts for one predict call, in pixel coordinates of the uploaded image (any of points and box)."""

    model_config = ConfigDict(extra="forbid")

    points: list[Point] | None = Field(None, description="N clicks [[x, y], ...]")
    labels: list[int] | None = Field(None, description="N labels: 1 foreground, 0 background")
    box: Annotated[list[float], Field(min_length=4, max_length=4)] | None = Field(None, description="[x0, y0, x1, y1]")
    use_previous_mask: bool = Field(False, description="feed this session's last mask back as the mask prompt")
    multimask: bool = Field(False, description="return every candidate mask instead of the single best output")


class SessionCreated(BaseModel):
    session: str = Field(description="the session id (unguessable)")
    height: int
    width: int
    encode_ms: float = Field(description="image encoder time")
    replica: str | None = Field(None, description="the model replica that encoded it (Ray Serve only)")


class RLE(BaseModel):
    size: list[int] = Field(description="[H, W]")
    counts: list[int] = Field(description="COCO uncompressed RLE: column-major run lengths, starting with zeros")


class Mask(BaseModel):
    rle: RLE
    iou: float = Field(description="the model's predicted IoU")


class PredictResponse(BaseModel):
    masks: list[Mask] = Field(description="candidates, best predicted IoU first")
    timings_ms: dict[str, float]


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong with the request")
    status: int


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model: str | None = None
    target: str | None = None
    verified: bool = False
    sessions: int = 0
    detail: str | None = None
