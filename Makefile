# presence: the two commands are `make run` and `make test`.
GO ?= go
PKG := ./...

.PHONY: run test test-short test-freeze bench bench-engine lint services

## run: presenced with an embedded broker, in-memory state and a demo fleet of
## 200 devices that come and go (10 s timeout); the API is on 127.0.0.1:8080.
## MQTT_URL, REDIS_URL/REDIS_HOST and DATABASE_URL make it use real services.
run:
	PRESENCE_DEMO=$${PRESENCE_DEMO:-200} DEVICE_OFFLINE_TIMEOUT=$${DEVICE_OFFLINE_TIMEOUT:-10} $(GO) run ./cmd/presenced

## test: every test, race detector on, against the real Redis, Postgres and
## Mosquitto (started, installed if missing, by scripts/services.sh)
test: services
	$(GO) vet $(PKG)
	$(GO) test -race -count=1 -timeout 20m $(PKG)

## test-freeze: the frozen-owner test (a cluster node stopped with SIGSTOP
## past its devices' timeout, then woken), kept out of make test for now
test-freeze: services
	PRESENCE_TEST_FREEZE=1 $(GO) test -race -count=1 -run TestRedisClusterFrozenOwner ./internal/app/daemon

## services: make sure Redis, PostgreSQL and Mosquitto run on 127.0.0.1
services:
	bash scripts/services.sh

## bench: every benchmark beside its baseline (see BENCHMARKS.md for the
## per-row commands; this one takes a while)
bench:
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 3 -timeout 60m $(PKG)

## bench-engine: the engine benchmarks of BENCHMARKS.md
bench-engine:
	$(GO) test ./engine -run '^$$' -bench . -count 5 -timeout 60m

## lint: gofmt and go vet
lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKG)
