// Package writebacktest is what the tests of every state sink share: an
// in-memory writeback.Source, and the conformance and outage suites that
// run the same behaviour tests against each implementation (litestream's
// RunWithReplicaClient habit). Each backend's tests call RunConformance and
// RunOutage with their harnesses.
package writebacktest
