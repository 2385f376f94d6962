#!/bin/bash
# Renders /tmp/patroni.yml from the pod's environment and runs Patroni with its Kubernetes DCS (ConfigMaps,
# role label on the pods, which the `-rw` Service selects). PATRONI_TTL/LOOP_WAIT/RETRY_TIMEOUT default to
# Patroni's documented defaults (30/10/10); the benchmark also runs it with pgpilot's timings.
set -euo pipefail
: "${POD_NAME:?}" "${POD_IP:?}" "${POD_NAMESPACE:?}" "${PATRONI_SCOPE:?}"
: "${SUPERUSER_PASSWORD:?}" "${REPLICATION_PASSWORD:?}" "${APP_PASSWORD:?}"
# psql connection URLs are handed to post_bootstrap; the app role and database mirror pgpilot's bootstrap.
cat >/tmp/post-bootstrap.sh <<SCRIPT
#!/bin/bash
set -e
psql -v ON_ERROR_STOP=1 "\$1" <<SQL
CREATE ROLE app LOGIN PASSWORD '${APP_PASSWORD}';
CREATE DATABASE app OWNER app;
SQL
SCRIPT
chmod 700 /tmp/post-bootstrap.sh
cat >/tmp/patroni.yml <<YAML
scope: ${PATRONI_SCOPE}
name: ${POD_NAME}
restapi:
  listen: 0.0.0.0:8008
  connect_address: ${POD_IP}:8008
kubernetes:
  namespace: ${POD_NAMESPACE}
  labels: {application: patroni, cluster-name: ${PATRONI_SCOPE}}
  role_label: role
  leader_label_value: primary
  follower_label_value: replica
  pod_ip: ${POD_IP}
  use_endpoints: false
bootstrap:
  dcs:
    ttl: ${PATRONI_TTL:-30}
    loop_wait: ${PATRONI_LOOP_WAIT:-10}
    retry_timeout: ${PATRONI_RETRY_TIMEOUT:-10}
    maximum_lag_on_failover: 1048576
    synchronous_mode: ${PATRONI_SYNCHRONOUS_MODE:-false}
    postgresql:
      use_pg_rewind: true
      parameters:
        max_connections: 50
        shared_buffers: 16MB
  initdb:
    - encoding: UTF8
    - auth-local: trust
    - auth-host: scram-sha-256
  post_bootstrap: /tmp/post-bootstrap.sh
postgresql:
  listen: 0.0.0.0:5432
  connect_address: ${POD_IP}:5432
  data_dir: /var/lib/postgresql/data/pgdata
  bin_dir: /usr/lib/postgresql/15/bin
  pgpass: /tmp/pgpass
  # As in pgpilot, a new replica's base backup asks for an immediate checkpoint (pg_basebackup's default,
  # a spread one, keeps a replica of an idle primary waiting for minutes).
  basebackup:
    - checkpoint: fast
  authentication:
    superuser: {username: postgres, password: '${SUPERUSER_PASSWORD}'}
    replication: {username: standby, password: '${REPLICATION_PASSWORD}'}
  pg_hba:
    - local all all trust
    - host replication standby all scram-sha-256
    - host all all all scram-sha-256
YAML
exec /opt/patroni/bin/patroni /tmp/patroni.yml
