#!/usr/bin/env bash
# Makes sure the services the integration tests talk to are running on this
# machine: Redis (127.0.0.1:6379), PostgreSQL (127.0.0.1:5432, database
# "test", trust auth) and Mosquitto (127.0.0.1:1883). Installs the Debian
# package of any that is missing, starts any that is stopped, and waits until
# each answers; also installs nats-server and mosquitto-clients (tests and
# benchmarks run their own) and Chromium for the dashboard's browser test.
# Idempotent; run as root (as CI and the dev machines do).
set -euo pipefail

say() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # port name
	for _ in $(seq 1 100); do
		port_open "$1" && return 0
		sleep 0.1
	done
	say "$2 did not come up on 127.0.0.1:$1"
	return 1
}

apt_updated=
need_pkg() { # command package...
	command -v "$1" >/dev/null 2>&1 && return 0
	shift
	if [ -z "$apt_updated" ]; then
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		apt_updated=1
	fi
	say "installing $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Redis
if ! port_open 6379; then
	need_pkg redis-server redis-server
	say "starting redis"
	redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
wait_port 6379 redis
# The Redis Cluster and Sentinel tests start private redis-server processes
# (cluster mode, --sentinel) and create the cluster with redis-cli; they
# skip without them.
need_pkg redis-server redis-server || say "redis-server could not be installed: the Redis Cluster and Sentinel tests will skip"
need_pkg redis-cli redis-tools || say "redis-cli could not be installed: the Redis Cluster tests will skip"

# PostgreSQL
if ! port_open 5432; then
	need_pkg pg_ctlcluster postgresql
	say "starting postgresql"
	pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start
fi
wait_port 5432 postgresql
# The tests use database "test" over 127.0.0.1 with trust auth, as on the dev
# machines; create it on a fresh install.
if command -v psql >/dev/null && ! psql -h 127.0.0.1 -U postgres -d test -Atc 'select 1' >/dev/null 2>&1; then
	say "creating database test"
	hba=$(su postgres -c "psql -Atc 'show hba_file'")
	if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
		sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
		su postgres -c "psql -Atc 'select pg_reload_conf()'" >/dev/null
	fi
	su postgres -c "createdb test" 2>/dev/null || true
fi

# Mosquitto
if ! port_open 1883; then
	need_pkg mosquitto mosquitto
	conf=/etc/mosquitto/mosquitto.conf
	say "starting mosquitto"
	mosquitto -d -c "$conf"
fi
wait_port 1883 mosquitto
say "redis, postgresql and mosquitto are up"

# nats-server for the tests against the NATS MQTT gateway (a broker without
# shared subscriptions); the tests start private servers of their own and
# skip without it.
need_pkg nats-server nats-server || say "nats-server could not be installed: the NATS MQTT gateway tests will skip"
# mosquitto_sub, a baseline of BenchmarkEndToEnd/qos=1 (skipped without it).
need_pkg mosquitto_sub mosquitto-clients || say "mosquitto-clients could not be installed: the mosquitto_sub baseline will skip"

# Headless Chromium for the dashboard's browser test (which skips without it).
if ! command -v chromium >/dev/null 2>&1; then
	need_pkg chromium chromium || say "chromium could not be installed: the browser test will skip"
fi
