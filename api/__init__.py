"""The HTTP API (DESIGN.md §6): built by `api.main:create_app`, run with `uvicorn --factory`."""
