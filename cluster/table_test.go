package cluster

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

func names(n int) []string {
	ms := make([]string, n)
	for i := range ms {
		ms[i] = fmt.Sprintf("node-%d", i)
	}
	return ms
}

// The hashes are a contract between nodes of different versions: these
// values must never change.
func TestPartitionOfGolden(t *testing.T) {
	for _, c := range []struct {
		id   string
		want int
	}{
		{"1", 982},
		{"sensor-000123", 14},
		{"device-42", 9},
		{"a", 603},
	} {
		if got := PartitionOf(c.id, 1024); got != c.want {
			t.Errorf("PartitionOf(%q, 1024) = %d, want %d", c.id, got, c.want)
		}
	}
	tb := NewTable(1024, []string{"node-a", "node-b", "node-c"})
	for p, want := range map[int]string{0: "node-c", 1: "node-b", 1023: "node-c"} {
		if got := tb.Owner(p); got != want {
			t.Errorf("Owner(%d) = %q, want %q", p, got, want)
		}
	}
}

func TestTableDeterministic(t *testing.T) {
	ms := names(7)
	a := NewTable(1024, ms)
	shuffled := slices.Clone(ms)
	rand.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	shuffled = append(shuffled, ms[2], "") // duplicates and empty names are ignored
	b := NewTable(1024, shuffled)
	if !a.Equal(b) {
		t.Fatal("tables differ")
	}
	for p := range 1024 {
		if a.Owner(p) != b.Owner(p) {
			t.Fatalf("partition %d: %q vs %q", p, a.Owner(p), b.Owner(p))
		}
	}
	if len(Moved(a, b)) != 0 {
		t.Fatal("Moved between equal tables")
	}
	if a.OwnerOf("sensor-1") != a.Owner(a.PartitionOf("sensor-1")) {
		t.Fatal("OwnerOf disagrees with Owner(PartitionOf)")
	}
}

func TestTableEmpty(t *testing.T) {
	tb := NewTable(16, nil)
	if tb.Owner(3) != "" || tb.Owned("x") != nil || tb.Has("x") {
		t.Fatal("empty table owns something")
	}
	if got := len(Moved(nil, tb)); got != 16 {
		t.Fatalf("Moved(nil, t) = %d partitions, want 16", got)
	}
}

func TestTableBalance(t *testing.T) {
	for _, n := range []int{2, 3, 5, 10} {
		t.Run(fmt.Sprint("nodes=", n), func(t *testing.T) {
			tb := NewTable(DefaultPartitions, names(n))
			mean := float64(DefaultPartitions) / float64(n)
			total := 0
			for m, c := range tb.Counts() {
				total += c
				if dev := (float64(c) - mean) / mean; dev > 0.25 || dev < -0.25 {
					t.Errorf("%s owns %d partitions, mean %.0f (%.0f%%)", m, c, mean, 100*dev)
				}
				if got := len(tb.Owned(m)); got != c {
					t.Errorf("Owned(%s) = %d, Counts says %d", m, got, c)
				}
			}
			if total != DefaultPartitions {
				t.Fatalf("%d partitions owned, want %d", total, DefaultPartitions)
			}
		})
	}
}

func TestPartitionOfBalance(t *testing.T) {
	const ids, parts = 200_000, 1024
	var counts [parts]int
	for i := range ids {
		counts[PartitionOf(fmt.Sprintf("sensor-%06d", i), parts)]++
	}
	mean := float64(ids) / parts // ~195, sd ~14
	for p, c := range counts {
		if float64(c) < 0.7*mean || float64(c) > 1.3*mean {
			t.Errorf("partition %d holds %d ids, mean %.0f", p, c, mean)
		}
	}
}

// Adding or removing one node moves only that node's share, ~1/N.
func TestTableMinimalMovement(t *testing.T) {
	check := func(t *testing.T, old, new *Table, node string, joined bool) {
		t.Helper()
		moved := Moved(old, new)
		for _, p := range moved {
			if joined && new.Owner(p) != node {
				t.Fatalf("partition %d moved to %s, not to the joining %s", p, new.Owner(p), node)
			}
			if !joined && old.Owner(p) != node {
				t.Fatalf("partition %d moved away from %s, not from the leaving %s", p, old.Owner(p), node)
			}
		}
		n := max(len(old.members), len(new.members))
		share := float64(DefaultPartitions) / float64(n)
		if got := float64(len(moved)); got < 0.7*share || got > 1.3*share {
			t.Fatalf("%d partitions moved, want ~%.0f (1/%d)", len(moved), share, n)
		}
	}
	for _, n := range []int{2, 3, 4, 8} {
		ms := names(n)
		t.Run(fmt.Sprint("join/nodes=", n), func(t *testing.T) {
			old := NewTable(DefaultPartitions, ms)
			check(t, old, NewTable(DefaultPartitions, append(slices.Clone(ms), "newcomer")), "newcomer", true)
		})
		t.Run(fmt.Sprint("leave/nodes=", n), func(t *testing.T) {
			old := NewTable(DefaultPartitions, ms)
			check(t, old, NewTable(DefaultPartitions, ms[1:]), ms[0], false)
		})
	}
}

func BenchmarkPartitionOf(b *testing.B) {
	for b.Loop() {
		_ = PartitionOf("sensor-000123", DefaultPartitions)
	}
}

func BenchmarkNewTable(b *testing.B) {
	ms := names(5)
	for b.Loop() {
		_ = NewTable(DefaultPartitions, ms)
	}
}
