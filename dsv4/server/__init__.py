"""OpenAI-compatible HTTP server (FastAPI): `create_app(...)`; needs the `serve` extra (fastapi, uvicorn)."""
