# Stands in for prom/prometheus: Debian 12's Prometheus; the Compose project passes the flags.
ARG BASE
FROM ${BASE}
# Without the web UI's JavaScript libraries (moment-timezone alone is 200 MB); the API stays.
RUN printf 'path-exclude /usr/share/javascript/*\npath-exclude /usr/share/doc/*\n' >/etc/dpkg/dpkg.cfg.d/01-slim \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup -m 0755 /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
