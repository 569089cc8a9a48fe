"""What every ``bentoml serve`` process runs, of either service: ASGI helpers, the header deadline,
the hop token between the services, readiness and shutdown, each server's own state folder."""
