# Stands in for python:3.11-slim-bookworm: Debian 12's Python 3.11 with venv.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3-venv \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["python3"]
