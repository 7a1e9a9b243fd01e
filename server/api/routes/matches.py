"""Policy-vs-policy matches over REST: submit (202, run in the background), status, frames,
delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from server.api.deps import DownloadsDep, MatchDep, MatchesDep, MatchToDelete, require_api_key
from server.api.schemas import MatchAccepted, MatchInfo
from server.match_service import MatchesFull, MatchStillPlaying
from server.requests import MatchRequest

router = APIRouter(prefix="/v1/matches", tags=["matches"], dependencies=[Depends(require_api_key)])
RETRY_FULL_S = "10"


@router.post("", status_code=202)
async def create_match(body: MatchRequest, matches: MatchesDep) -> MatchAccepted:
    try:
        job = await matches.create(body)
    except MatchesFull as e:
        raise HTTPException(503, str(e), headers={"Retry-After": RETRY_FULL_S}) from None
    return MatchAccepted(
        match_id=job.id,
        match_token=job.owner_token,
        status=job.status,
        url=f"/v1/matches/{job.id}",
    )


@router.get("/{match_id}", response_model_exclude_unset=True)
async def get_match(
    match_id: str,
    matches: MatchesDep,
    wait: bool = Query(False, description="block until the match is done"),
    timeout: float = Query(600.0, gt=0, le=3600, description="seconds to wait at most"),
) -> MatchInfo:
    info = await matches.describe(match_id, wait, timeout)
    if info is None:
        raise HTTPException(404, f"no match {match_id!r}")
    return MatchInfo.model_validate(info)


@router.get("/{match_id}/frames")
async def match_frames(
    job: MatchDep,
    downloads: DownloadsDep,
    format: str = Query("json", pattern="^(json|parquet)$"),
) -> Response:
    """Its trajectory once done: JSON `frame` messages, or parquet in the dataset schema."""
    if job.result is None:
        raise HTTPException(409, f"match {job.id} is {job.status}; its frames come when done")
    body, media_type = await downloads.match_frames(job.id, job.result, format)
    return Response(body, media_type=media_type)


@router.delete("/{match_id}", status_code=204)
async def delete_match(
    job: MatchToDelete, matches: MatchesDep, downloads: DownloadsDep
) -> Response:
    """Forget a finished match's frames now (its recording stays): a script that has read its
    result frees the memory it held."""
    try:
        matches.delete(job)
    except MatchStillPlaying as e:
        raise HTTPException(409, str(e)) from None
    downloads.forget(job.id)
    return Response(status_code=204)
