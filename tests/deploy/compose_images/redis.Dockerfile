# Stands in for redis:7-bookworm: Debian 12's Redis, data in /data, run as redis.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o redis -g redis -m 0750 /data
WORKDIR /data
USER redis
EXPOSE 6379
CMD ["redis-server"]
