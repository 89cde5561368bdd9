# The platform's Python image (compose.yaml): the API and its pages, the bridge, the scheduler, the
# aggregator, the feed and the `presence` console script. One image, the command picks the process.

# Front-end packages (swagger-ui and the pages' libraries) come from npm and are served by the API.
FROM node:20-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The uid of the eclipse-mosquitto image's `mosquitto` user: the password file the platform writes
# (mode 0600, shared volume) must be readable by the broker.
RUN useradd --system --uid 1883 --home-dir /app presence \
    && mkdir -p /app/var /mosquitto/auth \
    && chown presence:presence /app/var /mosquitto/auth

COPY pyproject.toml ./
COPY core ./core
COPY broker ./broker
COPY bridge ./bridge
COPY api ./api
COPY client_sim ./client_sim
COPY stack ./stack
COPY bench ./bench
COPY scheduler ./scheduler
COPY aggregator ./aggregator
COPY feed ./feed
COPY web/ui ./web/ui
COPY --from=web /web/node_modules ./web/node_modules
# Editable: data files next to the code (Lua scripts, pages) are used where they are.
RUN pip install -e .

USER presence
EXPOSE 8000
CMD ["uvicorn", "--factory", "api.main:create_app", "--host", "0.0.0.0", "--port", "8000"]
