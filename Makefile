# presence: the two commands are `make run` and `make test`.
GO ?= go
PKG := ./...

.PHONY: run test test-short bench bench-engine lint services

## run: presenced with an embedded broker and in-memory state, and a demo fleet
run:
	$(GO) run ./cmd/presenced -demo 200

## test: every test, race detector on, against the real Redis, Postgres and
## Mosquitto (started, installed if missing, by scripts/services.sh)
test: services
	$(GO) vet $(PKG)
	$(GO) test -race -count=1 -timeout 20m $(PKG)

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
