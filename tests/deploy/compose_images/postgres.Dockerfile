# Stands in for postgres:15-bookworm: Debian 12's PostgreSQL 15 with an entry point that
# honours the same POSTGRES_* variables on first start.
ARG BASE
FROM ${BASE}
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf \
    && apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confold postgresql-15 \
    && apt-get clean && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
RUN chmod 0755 /usr/local/bin/postgres-entrypoint \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint"]
EXPOSE 5432
CMD ["postgres"]
