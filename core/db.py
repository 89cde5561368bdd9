"""Opening MongoDB (FerretDB here, MongoDB 7 in production) and Beanie; no connection at import."""

from beanie import Document, init_beanie
from pymongo import AsyncMongoClient

from core.documents import DOCUMENT_MODELS
from core.settings import Settings


async def open_mongo(
    settings: Settings, models: list[type[Document]] | None = None
) -> AsyncMongoClient:
    """Connect and initialise Beanie; the caller closes the returned client."""
    client: AsyncMongoClient = AsyncMongoClient(
        settings.mongo_url, serverSelectionTimeoutMS=5000, tz_aware=True
    )
    await init_beanie(database=client[settings.mongo_db], document_models=models or DOCUMENT_MODELS)
    return client
