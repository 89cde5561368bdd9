"""Opening MongoDB (FerretDB here, MongoDB 7 in production) and Beanie; no connection at import."""

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from core.documents import DOCUMENT_MODELS
from core.history_documents import HISTORY_MODELS
from core.settings import Settings
from feed.documents import DashboardStatus

# Every collection of the platform: restaurants and users, the unavailability log, the aggregator's
# history and the dashboard feed's cold cache of current statuses.
ALL_MODELS: list[type[Document]] = [*DOCUMENT_MODELS, DashboardStatus, *HISTORY_MODELS]


async def open_mongo(settings: Settings, models: list[type[Document]] | None = None) -> AsyncMongoClient:
    """Connect and initialise Beanie; the caller closes the returned client."""
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True)
    try:
        await init_beanie(database=client[settings.mongo_db], document_models=models or ALL_MODELS)
    except BaseException:
        await client.close()
        raise
    return client
