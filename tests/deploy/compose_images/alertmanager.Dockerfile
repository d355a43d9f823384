# Stands in for prom/alertmanager: Debian 12's Alertmanager; the Compose project passes the flags.
ARG BASE
FROM ${BASE}
RUN apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus-alertmanager \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup -m 0755 /alertmanager
USER nobody
WORKDIR /alertmanager
EXPOSE 9093
ENTRYPOINT ["/usr/bin/prometheus-alertmanager"]
