"""The FastAPI control plane: `main.create_app` wires one router per resource."""
