package cluster

import (
	"slices"
	"strconv"
	"strings"
)

// DefaultPartitions is the default number of partitions. Every node of a
// cluster must use the same count: it is part of the routing contract.
const DefaultPartitions = 1024

// MaxPartitions bounds Config.Partitions (a partition number fits in 16 bits
// in the handoff frames).
const MaxPartitions = 1 << 16

// Hashing. Both functions are fixed forever: nodes of different versions must
// agree on them, so they are spelled out here rather than taken from a
// library (and never from hash/maphash, whose seed differs per process).
//
// A device id goes to a partition by FNV-1a 64 of its bytes, finished with
// the murmur3 fmix64 avalanche (FNV-1a alone leaves the low bits of similar
// ids correlated), modulo the partition count.
//
// A partition goes to the live member with the highest rendezvous weight
// fmix64(nodeHash ^ fmix64(partition+1)), nodeHash being the same hash of
// the member's name; ties (practically impossible) go to the smaller name.

const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

func fnv1a(s string) uint64 {
	h := uint64(fnvOffset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// fmix64 is murmur3's 64-bit finalizer.
func fmix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

// keyHash is the stable hash of a device id or node name.
func keyHash(s string) uint64 { return fmix64(fnv1a(s)) }

// PartitionOf returns the partition of device id among partitions (> 0).
// It is stable across processes, machines and versions.
func PartitionOf(id string, partitions int) int {
	return int(keyHash(id) % uint64(partitions))
}

// Table maps partitions to their owners. It is immutable: a membership change
// builds a new one. Every node builds the same Table from the same member
// names, whatever their order.
type Table struct {
	parts   int
	members []string // sorted, unique
	owner   []uint16 // partition -> index in members; nil when no members
}

// NewTable computes the owners of partitions (1..MaxPartitions) over the
// given member names (duplicates and empty names are ignored). With no
// members every partition is unowned (Owner returns "").
func NewTable(partitions int, members []string) *Table {
	if partitions < 1 || partitions > MaxPartitions {
		panic("cluster: partition count out of range")
	}
	ms := make([]string, 0, len(members))
	for _, m := range members {
		if m != "" {
			ms = append(ms, m)
		}
	}
	slices.Sort(ms)
	ms = slices.Compact(ms)
	if len(ms) > MaxPartitions {
		panic("cluster: too many members")
	}
	t := &Table{parts: partitions, members: ms}
	if len(ms) == 0 {
		return t
	}
	hs := make([]uint64, len(ms))
	for i, m := range ms {
		hs[i] = keyHash(m)
	}
	t.owner = make([]uint16, partitions)
	for p := range partitions {
		pk := fmix64(uint64(p) + 1)
		best, bestW := 0, fmix64(hs[0]^pk)
		for i := 1; i < len(hs); i++ {
			// members are sorted: on a tie the earlier (smaller) name stays.
			if w := fmix64(hs[i] ^ pk); w > bestW {
				best, bestW = i, w
			}
		}
		t.owner[p] = uint16(best)
	}
	return t
}

// Partitions returns the partition count.
func (t *Table) Partitions() int { return t.parts }

// Members returns the member names the table was built from, sorted.
func (t *Table) Members() []string { return slices.Clone(t.members) }

// Has reports whether name is a member of the table.
func (t *Table) Has(name string) bool {
	_, ok := slices.BinarySearch(t.members, name)
	return ok
}

// PartitionOf returns the partition of device id.
func (t *Table) PartitionOf(id string) int { return PartitionOf(id, t.parts) }

// Owner returns the member owning partition p, or "" when the table has no
// members. It panics if p is out of range.
func (t *Table) Owner(p int) string {
	if p < 0 || p >= t.parts {
		panic("cluster: partition out of range")
	}
	if t.owner == nil {
		return ""
	}
	return t.members[t.owner[p]]
}

// OwnerOf returns the member owning device id ("" with no members).
func (t *Table) OwnerOf(id string) string { return t.Owner(t.PartitionOf(id)) }

// Owned returns the partitions name owns, ascending.
func (t *Table) Owned(name string) []int {
	i, ok := slices.BinarySearch(t.members, name)
	if !ok || t.owner == nil {
		return nil
	}
	var ps []int
	for p, o := range t.owner {
		if int(o) == i {
			ps = append(ps, p)
		}
	}
	return ps
}

// Counts returns how many partitions each member owns.
func (t *Table) Counts() map[string]int {
	c := make(map[string]int, len(t.members))
	for _, m := range t.members {
		c[m] = 0
	}
	for _, o := range t.owner {
		c[t.members[o]]++
	}
	return c
}

// Equal reports whether a and b assign every partition to the same owner
// (nil is the empty table of no partitions).
func (a *Table) Equal(b *Table) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.parts == b.parts && slices.Equal(a.members, b.members)
}

// String is a short description: partition count and members.
func (t *Table) String() string {
	return "table{" + strconv.Itoa(t.parts) + " partitions: " + strings.Join(t.members, ",") + "}"
}

// Moved returns the partitions whose owner differs between old and new,
// ascending. A nil old table (the first table) counts every partition as
// moved. The tables must have the same partition count.
func Moved(old, new *Table) []int {
	if new == nil {
		return nil
	}
	if old != nil && old.parts != new.parts {
		panic("cluster: Moved: partition counts differ")
	}
	var ps []int
	for p := range new.parts {
		if old == nil || old.Owner(p) != new.Owner(p) {
			ps = append(ps, p)
		}
	}
	return ps
}
