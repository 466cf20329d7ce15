// Package wire holds the formats that presence writes for other programs to
// read, shared by the API, the events and the Redis sink so that they can
// never disagree: the time layout of the Redis last-seen contract, JSON
// string escaping, JSON answers over HTTP, and metric label values.
package wire
