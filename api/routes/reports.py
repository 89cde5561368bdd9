"""The offline ranking for the sales team, as JSON or CSV (DESIGN.md §1, §6)."""

import csv
import io
from datetime import date, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from api.deps import AUTH_ERRORS, SalesPrincipal, SettingsDep
from api.models import CALENDAR_MESSAGE, Name, in_calendar
from core.messages import utc_now
from core.offline_ranking import RankRow, offline_ranking

router = APIRouter(prefix="/reports", tags=["reports"])

CSV_HEADER = ("rank", "restaurant_id", "group", "offline_seconds")
DEFAULT_DAYS = 7
MAX_LIMIT = 100_000


class RankingRow(BaseModel):
    rank: int
    restaurant_id: str
    group: str
    offline_seconds: float = Field(description="time with reason DISCONNECTED in the period, up to now")


class OfflineRanking(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: date = Field(alias="from")
    to: date
    group: str | None
    limit: int
    rows: list[RankingRow] = Field(description="by offline_seconds, most first, then by restaurant id")


def _invalid(name: str, message: str) -> RequestValidationError:
    return RequestValidationError([{"type": "value_error", "loc": ("query", name), "msg": message, "input": None}])


def ranking_csv(rows: list[RankRow]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows((r.rank, r.restaurant_id, r.group, r.offline_seconds) for r in rows)
    return out.getvalue()


@router.get(
    "/offline-ranking",
    response_model=OfflineRanking,
    responses={**AUTH_ERRORS, 200: {"content": {"text/csv": {}}, "description": "JSON, or CSV on Accept: text/csv"}},
)
async def ranking(
    principal: SalesPrincipal,
    settings: SettingsDep,
    first: Annotated[date | None, Query(alias="from", description="first local day; default 6 days before to")] = None,
    last: Annotated[date | None, Query(alias="to", description="last local day (inclusive); default today")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    group: Annotated[Name | None, Query()] = None,
    fmt: Annotated[Literal["json", "csv"] | None, Query(alias="format", description="csv: same as Accept")] = None,
    accept: Annotated[str, Header()] = "",
) -> Any:
    """Restaurants ranked by time offline with reason DISCONNECTED over days `from`..`to` (sales and admin).

    Days are local days of each restaurant's own time zone. Ongoing disconnections count up to now.
    `Accept: text/csv` (or `format=csv`) gives CSV with the header `rank,restaurant_id,group,offline_seconds`.
    """
    for name, day in (("from", first), ("to", last)):
        if day is not None and not in_calendar(day):
            raise _invalid(name, CALENDAR_MESSAGE)
    now = utc_now()
    last = last or now.date()
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise _invalid("from", "must not be after to")
    if (last - first).days + 1 > settings.ranking_max_days:
        raise _invalid("to", f"the period may span at most {settings.ranking_max_days} days")
    rows = await offline_ranking(first, last, now, group, limit)
    if fmt == "csv" or (fmt is None and "text/csv" in accept):
        filename = f"offline-ranking_{first}_{last}{'_' + group if group else ''}.csv"
        return Response(
            ranking_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
    # Plain dicts: validating 100,000 rows through the response model would cost more than the query.
    return JSONResponse(
        {
            "from": first.isoformat(),
            "to": last.isoformat(),
            "group": group,
            "limit": limit,
            "rows": [
                {"rank": r.rank, "restaurant_id": r.restaurant_id, "group": r.group,
                 "offline_seconds": r.offline_seconds}
                for r in rows
            ],
        }
    )  # fmt: skip
