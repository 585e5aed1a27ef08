"""The FastAPI service: app factory, settings wiring, schemas, errors, wire encoders and routes."""
