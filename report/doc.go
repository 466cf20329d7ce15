// Package report answers the questions an operator asks beyond "is it
// online now": what a device did (History), how available it was (Uptime,
// and FleetUptime for the fleet), and which devices have been offline
// longest (Longest). History and uptime read the PostgreSQL table that
// postgres.History (writeback/postgres) fills with every transition; the
// device list reads the live engine. A Report starts no goroutine.
//
//	rcfg := report.DefaultConfig()
//	rcfg.Table = historyTable                // the postgres.HistoryConfig.Table in use
//	rep, err := report.New(pool, eng, rcfg) // pool may be nil: no history
//	rep.Mount(apiServer)                     // behind the API token
//
// Mount adds GET /v1/devices/{id}/history, GET /v1/devices/{id}/uptime,
// GET /v1/uptime and GET /v1/devices. Their parameters, answers and rules:
// docs/API.md.
package report
