package testenv

import (
	"bufio"
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
