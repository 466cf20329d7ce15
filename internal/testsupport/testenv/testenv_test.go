package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

func TestName(t *testing.T) {
	a, b := Name(t), Name(t)
	if a == b || !strings.HasPrefix(a, "t_testname_") {
		t.Fatalf("names %q %q", a, b)
	}
}

// An echo server behind the proxy: traffic flows, a cut breaks it, a
// restore lets new connections through.
func TestProxy(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				s := bufio.NewScanner(c)
				for s.Scan() {
					c.Write([]byte(s.Text() + "\n"))
				}
				c.Close()
			}()
		}
	}()
	p := NewProxy(t, ln.Addr().String())
	echo := func() error {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := c.Write([]byte("hi\n")); err != nil {
			return err
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return err
		}
		if line != "hi\n" {
			t.Fatalf("echo %q", line)
		}
		return nil
	}
	if err := echo(); err != nil {
		t.Fatal(err)
	}
	p.Cut()
	if err := echo(); err == nil {
		t.Fatal("traffic through a cut proxy")
	}
	p.Restore()
	Eventually(t, 2*time.Second, echo)
}

// The private Redis Cluster serves every slot, and a killed master's
// replica takes its slots over.
func TestRedisCluster(t *testing.T) {
	rc := StartRedisCluster(t, 3, 1)
	masters, err := rc.Masters()
	if err != nil || len(masters) != 3 {
		t.Fatalf("masters %v %v", masters, err)
	}
	c := rc.Client(t)
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	m, err := rc.MasterOf("k")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	rc.Node(m).Kill()
	if err := rc.WaitHealthy(20 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("failover of %s took %v", m, time.Since(start))
	if m2, err := rc.MasterOf("k"); err != nil || m2 == m {
		t.Fatalf("master of k after the failover: %s %v", m2, err)
	}
}

// The Sentinels fail a killed primary over to its replica.
func TestRedisSentinel(t *testing.T) {
	rs := StartRedisSentinel(t)
	p, err := rs.PrimaryAddr()
	if err != nil || p != rs.Primary.Addr {
		t.Fatalf("primary %s %v, want %s", p, err, rs.Primary.Addr)
	}
	start := time.Now()
	rs.Primary.Kill()
	Eventually(t, 30*time.Second, func() error {
		p, err := rs.PrimaryAddr()
		if err != nil || p != rs.Replica.Addr {
			return fmt.Errorf("primary %s %v", p, err)
		}
		return nil
	})
	t.Logf("failover took %v", time.Since(start))
}
